"""One library function per CLI stage: open inputs through one helper, do one thing, write one artifact.

The CLI (:mod:`ebmtool.cli`) only parses options, calls one of these and prints; everything here is importable
and scriptable, and these names are stable (docs/api.md). Each stage runs an in-memory core (``draw_samples``,
``reconstruct_images``, ``score_images``, ``fit``), which :mod:`ebmtool.stages.api`, the Python API that
:mod:`ebmtool` re-exports, calls as well.
"""

from ebmtool.stages.evaluate import anomaly, batched, reconstruct, sample
from ebmtool.stages.report import fid, inspect, plot, train_features
from ebmtool.stages.score import score_data
from ebmtool.stages.train import checkpoint_path, data_prepare, open_training_data, train

__all__ = ["data_prepare", "open_training_data", "checkpoint_path", "train", "sample", "reconstruct", "anomaly",
           "score_data", "batched", "inspect", "plot", "fid", "train_features"]

"""One library function per CLI stage: open inputs through one helper, do one thing, write one artifact.

The CLI (:mod:`ebmtool.cli`) only parses options, calls one of these and prints; everything here is importable
and scriptable.
"""

from ebmtool.stages.evaluate import anomaly, batched, reconstruct, sample
from ebmtool.stages.report import fid, inspect, plot, train_features
from ebmtool.stages.train import checkpoint_path, data_prepare, open_training_data, train

__all__ = ["data_prepare", "open_training_data", "checkpoint_path", "train", "sample", "reconstruct", "anomaly",
           "batched", "inspect", "plot", "fid", "train_features"]

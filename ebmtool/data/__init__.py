"""Datasets: one loader per source, all returning uint8 images N x C x H x W and int64 labels.

``prepare`` applies class filters, the hold-one-class anomaly protocol, resizing and a limit, and returns
what :func:`ebmtool.artifacts.save` writes as a ``dataset`` artifact. ``load_images`` opens a dataset (or
samples) artifact for training: float images in [-1, 1].
"""

from ebmtool.data.prepare import DataConfig, as_images, collect_images, load_images, prepare, protocol_split
from ebmtool.data.sources import SOURCES

__all__ = ["DataConfig", "SOURCES", "as_images", "collect_images", "load_images", "prepare", "protocol_split"]

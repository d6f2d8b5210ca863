"""Small conv classifiers whose penultimate layer serves as an FID feature space.

Input: images in [0, 1], N x 3 x H x W (grey already repeated to RGB, as for Inception).
``features(x)`` is the feature vector (the analogue of Inception's pool3); ``forward(x)`` adds one linear layer
on top and returns class logits. No training logic here (see :func:`ebmtool.eval.fid.train_features`).

:class:`LeNetClassifier` (arch ``lenet``, the default of ``train-features``): two 5x5 conv + max-pool layers and a
dense layer whose activations are the features (0.98 held-out accuracy on MNIST 32x32 after 2 epochs).
:class:`FeatureClassifier` (arch ``convpool``): the earlier all-conv net with a global average pool (0.78 on
MNIST after 5 epochs); kept so that features artifacts written with it still load.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class _Classifier(nn.Module):
    """What both classifiers share: ``features`` (the subclass's) and a linear head on them; ``widths[-1]`` is the
    feature dimension."""

    widths: list[int]
    head: nn.Linear

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) in [0, 1] -> (N, D)
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) in [0, 1] -> (N, classes) logits
        return self.head(self.features(x))


class FeatureClassifier(_Classifier):
    """conv(3->w0) + [conv stride 2 (w_i-1 -> w_i)]... each with BatchNorm + ReLU, avg pool, linear head."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 64)):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError("widths must be a non-empty list of positive ints")
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            layers += [
                nn.Conv2d(cin, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            cin = w
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)
        self.widths = widths
        self.num_classes = int(num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(2.0 * x - 1.0)).flatten(1)


class LeNetClassifier(_Classifier):
    """LeNet-style: [conv 5x5 (pad 2) + ReLU + max-pool 2] x 2 (widths[0], widths[1] channels), a dense layer of
    widths[2] units + ReLU (the features), a linear head. Needs H, W >= 4. Grey images (C = 1 in ``image_shape``)
    read channel 0 of the RGB-repeated input only (a third of the first layer's work)."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (16, 32, 128),
                 image_shape: Sequence[int] = (1, 32, 32)):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError("lenet widths must be three positive ints (conv1, conv2, dense)")
        c = int(image_shape[0])
        h, w = (int(s) // 4 for s in image_shape[1:])
        if h < 1 or w < 1:
            raise ValueError(f"lenet needs images of at least 4x4, got {image_shape[1]}x{image_shape[2]}")
        self.in_channels = 1 if c == 1 else 3
        self.body = nn.Sequential(
            nn.Conv2d(self.in_channels, widths[0], 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(widths[0], widths[1], 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(widths[1] * h * w, widths[2]), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(widths[2], num_classes)
        self.widths = widths
        self.num_classes = int(num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(2.0 * x[:, : self.in_channels] - 1.0)


ARCHS = {"lenet": (16, 32, 128), "convpool": (32, 64, 64)}  # arch -> default widths


def build_classifier(arch: str, num_classes: int, widths: Sequence[int], image_shape: Sequence[int]) -> nn.Module:
    """``image_shape``: C x H x W of the images the classifier reads."""
    if arch == "lenet":
        return LeNetClassifier(num_classes, widths, image_shape)
    if arch == "convpool":
        return FeatureClassifier(num_classes, widths)
    raise ValueError(f"unknown classifier arch {arch!r} (choose from {', '.join(ARCHS)})")

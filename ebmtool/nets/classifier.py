"""Small conv classifier whose pooled last-conv features serve as an FID feature space.

Input: images in [0, 1], N x 3 x H x W (grey already repeated to RGB, as for Inception).
``features(x)`` is the global average pool of the last conv block (the analogue of Inception's pool3);
``forward(x)`` adds one linear layer on top and returns class logits. No training logic here
(see :func:`ebmtool.eval.fid.train_features`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class FeatureClassifier(nn.Module):
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

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) in [0, 1] -> (N, D)
        return self.pool(self.body(2.0 * x - 1.0)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) in [0, 1] -> (N, classes) logits
        return self.head(self.features(x))

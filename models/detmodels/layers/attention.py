"""Channel re-weighting: Squeeze-and-Excitation (Hu et al., CVPR 2018, §3)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SqueezeExcitation"]


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation block (SENet §3): global average pool → FC (C→C/r) → ReLU →
    FC (C/r→C) → sigmoid → channel-wise rescale of the input.

    Shapes: ``N×C×H×W`` → ``N×C×H×W``. The hidden width is ``max(C // reduction, 1)``.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        w = x.mean(dim=(2, 3))  # N×C squeeze
        w = torch.sigmoid(self.fc2(self.act(self.fc1(w))))
        return x * w[:, :, None, None].to(x.dtype)

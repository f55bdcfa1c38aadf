"""DropBlock (Ghiasi et al. 2018, "DropBlock: A regularization method for convolutional networks",
arXiv 1810.12890, §3 Algorithm 1), as the ASFF paper's YOLOv3 neck uses it (ASFF* ``--dropblock``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DropBlock"]


class DropBlock(nn.Module):
    """Zero contiguous ``block_size × block_size`` regions during training and rescale the rest.

    ``γ = (1 − keep_prob)·W² / (block_size²·(W − block_size + 1)²)`` seeds per position are drawn,
    each grown to a block by a stride-1 max-pool; the output is ``mask·x·numel(mask)/Σ mask``
    (Algorithm 1, with W the feature width). Identity in eval mode or when ``keep_prob == 1``.
    The reference computes γ once per schedule change from the first batch; here it follows every
    batch's width. Shapes: ``N×C×H×W`` → same.
    """

    def __init__(self, block_size: int = 1, keep_prob: float = 1.0):
        super().__init__()
        self.reset(block_size, keep_prob)

    def reset(self, block_size: int, keep_prob: float) -> None:
        """Change the schedule's block size (odd) and keep probability."""
        if block_size < 1 or block_size % 2 == 0:
            raise ValueError(f"block_size must be a positive odd number, got {block_size}")
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
        self.block_size, self.keep_prob = int(block_size), float(keep_prob)

    def gamma(self, width: int) -> float:
        valid = max(width - self.block_size + 1, 1)
        return (1.0 - self.keep_prob) * width**2 / (self.block_size**2 * valid**2)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.keep_prob >= 1.0:
            return x
        seeds = torch.bernoulli(torch.full_like(x, self.gamma(x.shape[-1]), dtype=torch.float32))
        mask = 1.0 - F.max_pool2d(seeds, self.block_size, 1, self.block_size // 2)
        return (x.float() * mask * (mask.numel() / mask.sum().clamp(min=1.0))).to(x.dtype)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, keep_prob={self.keep_prob}"

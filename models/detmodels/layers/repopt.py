"""The two blocks of RepOpt training (Ding et al. 2022, "Re-parameterizing Your Optimizers rather than
Architectures", arXiv 2205.15242, §3; YOLOv6's quantization-friendly recipe).

* :class:`LinearAddBlock` — the *hyper-search* block: a CSLA (constant-scale linear addition) block
  whose per-channel branch scales are trainable. ``act(BN(s3·conv3×3 x + s1·conv1×1 x + sI·x))``.
* :class:`RealVGGBlock` — the *RepOpt* block: one plain 3×3 conv (no bias) → BN → ReLU. Trained with
  :class:`detmodels.repopt.RepOptimizer`, whose gradient masks (built from the trained scales of the
  hyper-search run) reproduce the CSLA block's training dynamics (§3.2).

The kernel formula both share (:func:`csla_kernel`) is ``W' = s3·W3 + s1·pad(W1) + sI·I``, scales
per output channel.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .conv import ConvNormAct, fuse_conv_bn, make_act

__all__ = ["LinearAddBlock", "RealVGGBlock", "csla_kernel", "identity_kernel"]


def identity_kernel(channels: int, *, like: Tensor) -> Tensor:
    """The 3×3 kernel (``C×C×3×3``) of the identity map: 1 at the centre of ``[c, c]``."""
    eye = torch.zeros(channels, channels, 3, 3, device=like.device, dtype=like.dtype)
    idx = torch.arange(channels, device=like.device)
    eye[idx, idx, 1, 1] = 1.0
    return eye


def csla_kernel(w3: Tensor, w1: Tensor, s3: Tensor, s1: Tensor, s_id: Tensor | None) -> Tensor:
    """The single 3×3 kernel of a CSLA block (RepOpt §3.1, Eq. 3): ``s3·W3 + s1·pad(W1) + sI·I``.

    Shapes: ``w3`` ``O×I×3×3``, ``w1`` ``O×I×1×1``, scales ``O``; ``s_id`` only when ``O == I``
    (stride 1). Returns ``O×I×3×3``.
    """
    kernel = s3.reshape(-1, 1, 1, 1) * w3 + s1.reshape(-1, 1, 1, 1) * nn.functional.pad(w1, [1, 1, 1, 1])
    if s_id is not None:
        kernel = kernel + s_id.reshape(-1, 1, 1, 1) * identity_kernel(w3.shape[0], like=w3)
    return kernel


class LinearAddBlock(nn.Module):
    """Hyper-search block (RepOpt §3.3; YOLOv6 ``LinearAddBlock``):
    ``act(BN(s3⊙conv3×3(x) + s1⊙conv1×1(x) + sI⊙x))``.

    Both convs have no bias and no BN of their own; ``scale3``, ``scale1`` and ``scale_id`` (the last
    only when ``in == out`` and ``stride == 1``) are trainable per-output-channel vectors, all
    initialised to 1 (YOLOv6's ``conv_scale_init = 1.0`` and identity scale 1.0). Their trained
    values become the RepOpt model's constants (:func:`detmodels.repopt.extract_scales`).

    Shapes: ``N×in×H×W`` → ``N×out×H/stride×W/stride``. :meth:`reparameterize` folds everything
    into one biased 3×3 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, act: str | None = "relu",
                 bn_eps: float = 1e-3, bn_momentum: float = 0.03):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.conv3x3 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.conv1x1 = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)
        self.scale3 = nn.Parameter(torch.ones(out_channels))
        self.scale1 = nn.Parameter(torch.ones(out_channels))
        has_id = in_channels == out_channels and stride == 1
        self.scale_id = nn.Parameter(torch.ones(out_channels)) if has_id else None
        self.norm = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = make_act(act)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        y = self.scale3.reshape(1, -1, 1, 1) * self.conv3x3(x) + self.scale1.reshape(1, -1, 1, 1) * self.conv1x1(x)
        if self.scale_id is not None:
            y = y + self.scale_id.reshape(1, -1, 1, 1) * x
        return self.act(self.norm(y))

    def scales(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """Detached copies of ``(s3, s1, sI | None)``, each of shape ``out``."""
        s_id = None if self.scale_id is None else self.scale_id.detach().clone()
        return self.scale3.detach().clone(), self.scale1.detach().clone(), s_id

    @torch.no_grad()
    def reparameterize(self) -> None:
        """One biased 3×3 conv: the CSLA kernel (:func:`csla_kernel`) with the BN folded in."""
        if self.fused is not None:
            return
        kernel = csla_kernel(self.conv3x3.weight, self.conv1x1.weight, *self.scales())
        self.fused = fuse_conv_bn(self.conv3x3, self.norm, out_kernel=kernel)
        del self.conv3x3, self.conv1x1, self.scale3, self.scale1, self.scale_id, self.norm
        self.scale_id = None


class RealVGGBlock(ConvNormAct):
    """RepOpt block (RepOpt §3; YOLOv6 ``RealVGGBlock``): plain ``ReLU(BN(conv3×3(x)))``, conv without bias.

    Single-branch in training and deployment, so it quantizes like any plain conv. Its kernel is
    initialised from the hyper-search scales and trained with gradient masks
    (:mod:`detmodels.repopt`); :meth:`reparameterize` folds the BN.
    Shapes: ``N×in×H×W`` → ``N×out×H/stride×W/stride``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, act: str | None = "relu",
                 bn_eps: float = 1e-3, bn_momentum: float = 0.03):
        super().__init__(in_channels, out_channels, 3, stride, act=act, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    @property
    def has_identity(self) -> bool:
        """Whether the matching CSLA block has an identity branch (``in == out``, stride 1)."""
        return self.in_channels == self.out_channels and self.stride == 1

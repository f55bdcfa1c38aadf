"""RepOptimizer: gradient re-parameterization (Ding et al. 2022, arXiv 2205.15242, §3) for YOLOv6's
quantization-friendly training.

Two runs (docs/yolov6-quantization.md):

1. *hyper-search*: a model built with ``backbone.block: hyper_search`` (:class:`LinearAddBlock`) learns
   per-channel branch scales ``s3``, ``s1``, ``sI``.
2. *RepOpt*: the same model with ``backbone.block: repopt`` (:class:`RealVGGBlock`, one plain 3×3 conv).
   Each kernel starts as ``W' = s3·W3 + s1·pad(W1) + sI·I`` (:func:`init_from_scales_`, ``W3``/``W1`` a
   fresh init) and its gradient is multiplied by the constant mask ``M[c] = s3[c]²`` plus ``s1[c]²`` at
   the kernel centre (:func:`grad_mask`), which :class:`RepOptimizer` applies in ``step``.

Why it is exact (§3.2): a CSLA block with constant scales has ``W' = s3·W3 + s1·W1 + sI·I`` and its
SGD step on ``W3``, ``W1`` moves ``W'`` by ``−lr·(s3²·∇W' + s1²·centre(∇W'))`` = ``−lr·M⊙∇W'``. The map
is linear, so momentum (and Nesterov) buffers stay equivalent too: ``V = s3·v3 + s1·v1`` obeys
``V ← μV + M⊙∇W'``. Weight decay is applied *after* the mask, to the whole ``W'`` (as SGD does with
any parameter): CSLA's decay of ``W3``, ``W1`` equals ``λ·(W' − sI·I)`` in ``W'`` space, so the two
differ only by the identity part's decay ``λ·sI·I`` (zero for blocks without an identity branch).

Scales are keyed by the block's module name, so a hyper-search model's scales map onto the RepOpt
model built from the same variant and options.

>>> import detmodels
>>> hyper = detmodels.create_model("yolov6_n", num_classes=3, backbone=detmodels.YOLOv6BackboneOptions(block="hyper_search"))
>>> scales = extract_scales(hyper)            # {"backbone.stem": (s3, s1, None), …}  # doctest: +SKIP
>>> model = detmodels.create_model("yolov6_n", num_classes=3, backbone=detmodels.YOLOv6BackboneOptions(block="repopt"))
>>> init_from_scales_(model, scales)          # doctest: +SKIP
>>> opt = RepOptimizer(model.parameters(), grad_masks(model, scales), lr=0.01, momentum=0.937)  # doctest: +SKIP
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from .layers.repopt import LinearAddBlock, RealVGGBlock, csla_kernel

__all__ = ["RepOptScales", "extract_scales", "scales_from_state_dict", "realvgg_blocks", "check_scales",
           "init_from_scales_", "grad_mask", "grad_masks", "RepOptimizer"]

RepOptScales = dict[str, tuple[Tensor, Tensor, "Tensor | None"]]
"""``{block module name: (s3, s1, sI or None)}``, each a vector over the block's output channels."""


def extract_scales(model: nn.Module) -> RepOptScales:
    """The trained scales of every (unfused) :class:`LinearAddBlock` of a hyper-search ``model``.

    Raises ``ValueError`` when the model has none (not a hyper-search model).
    """
    scales = {name: m.scales() for name, m in model.named_modules()
              if isinstance(m, LinearAddBlock) and m.fused is None}
    if not scales:
        raise ValueError("no LinearAddBlock in the model: expected a hyper-search model (block hyper_search)")
    return scales


def scales_from_state_dict(state: Mapping[str, Tensor]) -> RepOptScales:
    """:func:`extract_scales` from a hyper-search model's ``state_dict`` (keys ``<block>.scale3``,
    ``<block>.scale1``, ``<block>.scale_id``), without building the model. Float32 CPU copies.

    Raises ``ValueError`` when it holds no ``.scale3`` keys (not a hyper-search model).
    """
    scales: RepOptScales = {}
    for key in state:
        if not key.endswith(".scale3"):
            continue
        name = key[: -len(".scale3")]
        s_id = state.get(f"{name}.scale_id")
        scales[name] = (_vec(state[key]), _vec(state[f"{name}.scale1"]), None if s_id is None else _vec(s_id))
    if not scales:
        raise ValueError("no '<block>.scale3' weights: expected the state of a hyper-search model (block hyper_search)")
    return scales


def _vec(t: Tensor) -> Tensor:
    return t.detach().to("cpu", torch.float32).reshape(-1).clone()


def realvgg_blocks(model: nn.Module) -> dict[str, RealVGGBlock]:
    """``{module name: block}`` of every :class:`RealVGGBlock` still holding its BN (not yet fused;
    a SyncBatchNorm counts)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, RealVGGBlock) and not isinstance(m.norm, nn.Identity)}


def check_scales(model: nn.Module, scales: Mapping[str, tuple]) -> dict[str, RealVGGBlock]:
    """The RealVGG blocks of ``model``, after checking that ``scales`` has one entry per block, with
    vectors of the block's output width and an identity scale exactly when the block has one.

    Raises ``ValueError`` naming the first block that does not match (a scale set of another model).
    """
    blocks = realvgg_blocks(model)
    if not blocks:
        raise ValueError("no RealVGGBlock in the model: expected a RepOpt model (block repopt)")
    for name, block in blocks.items():
        if name not in scales:
            raise ValueError(f"no scales for block {name!r} ({len(scales)} scale sets for {len(blocks)} blocks): "
                             "expected the scales of the same model with block hyper_search")
        s3, s1, s_id = scales[name]
        widths = {tuple(s.shape) for s in (s3, s1, s_id) if s is not None}
        if widths != {(block.out_channels,)} or (s_id is not None) != block.has_identity:
            raise ValueError(f"scales of block {name!r} do not fit it ({block.in_channels}→{block.out_channels}, "
                             f"stride {block.stride}): expected the scales of the same model with block hyper_search")
    return blocks


def _fresh_kernel(out_c: int, in_c: int, k: int, like: Tensor) -> Tensor:
    """PyTorch's default conv init (kaiming-uniform, a = √5, i.e. U(±1/√fan_in)) for an ``out×in×k×k`` kernel."""
    w = torch.empty(out_c, in_c, k, k, device=like.device, dtype=like.dtype)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    return w


@torch.no_grad()
def init_from_scales_(model: nn.Module, scales: Mapping[str, tuple]) -> None:
    """Set every RealVGG kernel to ``s3·W3 + s1·pad(W1) + sI·I`` (:func:`csla_kernel`), with ``W3`` and
    ``W1`` freshly drawn (PyTorch's default conv init, the torch RNG). BN is left as it is."""
    for name, block in check_scales(model, scales).items():
        w = block.conv.weight
        s3, s1, s_id = (None if s is None else s.to(w.device, w.dtype) for s in scales[name])
        o, i = w.shape[:2]
        w.copy_(csla_kernel(_fresh_kernel(o, i, 3, w), _fresh_kernel(o, i, 1, w), s3, s1, s_id))


def grad_mask(s3: Tensor, s1: Tensor, kernel_shape: torch.Size | tuple[int, ...]) -> Tensor:
    """The RepOpt gradient mask (RepOpt §3.2) of an ``O×I×3×3`` kernel: ``s3[c]²`` everywhere plus
    ``s1[c]²`` at the centre tap, for output channel ``c``. The identity scale does not enter."""
    mask = (s3 ** 2).reshape(-1, 1, 1, 1).expand(kernel_shape).clone()
    mask[:, :, 1, 1] += (s1 ** 2).reshape(-1, 1)
    return mask


def grad_masks(model: nn.Module, scales: Mapping[str, tuple]) -> dict[Tensor, Tensor]:
    """``{conv weight: mask}`` for every RealVGG block of ``model`` (masks on the weight's device/dtype)."""
    masks: dict[Tensor, Tensor] = {}
    for name, block in check_scales(model, scales).items():
        w = block.conv.weight
        s3, s1, _ = scales[name]
        masks[w] = grad_mask(s3.to(w.device, w.dtype), s1.to(w.device, w.dtype), w.shape)
    return masks


class RepOptimizer(torch.optim.SGD):
    """SGD whose gradients of the masked parameters are multiplied by their constant masks first
    (RepOpt §3.2, "RepOpt-SGD"); then weight decay, momentum and Nesterov exactly as SGD.

    Args:
        params: parameters or parameter groups, as for SGD.
        masks: ``{parameter: mask}`` (mask of the parameter's shape), e.g. :func:`grad_masks`.
        **sgd: SGD's arguments (``lr``, ``momentum``, ``weight_decay``, ``nesterov`` …).

    The masks are constants, not optimizer state: ``state_dict`` is SGD's, and a resumed run
    rebuilds the masks from the same scales.
    """

    def __init__(self, params: Iterable, masks: Mapping[Tensor, Tensor], **sgd):
        super().__init__(params, **sgd)
        ids = {id(p) for g in self.param_groups for p in g["params"]}
        self.masks = {id(p): (p, m) for p, m in masks.items() if id(p) in ids}
        if len(self.masks) != len(masks):
            raise ValueError(f"{len(masks) - len(self.masks)} masked parameters are not optimised by this optimizer")

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Multiply each masked parameter's ``.grad`` by its mask, in place (moved to its device once)."""
        for key, (p, mask) in self.masks.items():
            if p.grad is None:
                continue
            if mask.device != p.grad.device or mask.dtype != p.grad.dtype:
                mask = mask.to(p.grad.device, p.grad.dtype)
                self.masks[key] = (p, mask)
            p.grad.mul_(mask)

    def step(self, closure=None):  # noqa: ANN001, ANN201 (SGD's signature)
        """Mask the gradients, then one SGD step. With a ``closure`` it is evaluated first (grads
        recomputed), then masked."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.apply_masks()
        super().step()
        return loss

"""RepOpt training of YOLOv6 (``train.optimizer.name: repopt``, docs/yolov6-quantization.md): the
scales of a hyper-search checkpoint initialise the RealVGG kernels and set the gradient masks of
``detmodels.RepOptimizer`` (RepOpt, arXiv 2205.15242, §3).

* :func:`check_repopt_scales` — before Ray starts: ``train.optimizer.repopt_scales`` must be a
  checkpoint of a hyper-search run (``backbone.block: hyper_search``) of the same model with the same
  stage layout (``backbone.csp_e``, ``neck.csp_e``); otherwise one line naming the field, exit 2.
* :func:`load_repopt_scales` — in the worker: the scales from that checkpoint's weights (the EMA
  weights when it has them, as the checkpoint's model is loaded everywhere else).
* :func:`apply_repopt_init` — ``init_from_scales_`` on a fresh model; the scales stay on the model
  (``model.repopt_scales``) for the optimizer's masks.
"""
from __future__ import annotations

from typing import Any

from ..config.train import TrainConfig
from ..engine import checkpoint as ckpt_io
from ..errors import UserInputError

__all__ = ["check_repopt_scales", "load_repopt_scales", "apply_repopt_init", "repopt_masks", "FIELD"]

FIELD = "train.optimizer.repopt_scales"


def _layout(model_cfg: Any) -> dict[str, Any]:
    """What decides which blocks exist and their widths, besides the variant: the CSP ratios."""
    backbone, neck = getattr(model_cfg, "backbone", None), getattr(model_cfg, "neck", None)
    return {"backbone.csp_e": getattr(backbone, "csp_e", None), "neck.csp_e": getattr(neck, "csp_e", None)}


def check_repopt_scales(cfg: TrainConfig) -> None:
    """Refuse (UserInputError, one line naming the field and the value) a ``repopt_scales`` that is not
    a detflow checkpoint, or is one of a model that is not the hyper-search form of ``cfg.model``."""
    path = cfg.train.optimizer.repopt_scales
    if cfg.train.optimizer.name != "repopt" or path is None:
        return
    try:
        stored = ckpt_io.read_config(path).model
    except UserInputError as exc:
        raise UserInputError(f"{FIELD}: {path}: expected the checkpoint directory of a hyper-search run ({exc})") from None
    block = getattr(getattr(stored, "backbone", None), "block", None)
    if block != "hyper_search":
        raise UserInputError(f"{FIELD}: {path}: a checkpoint of {stored.name} with backbone.block {block!r}; expected "
                             "a hyper-search run (model.backbone.block: hyper_search)")
    if stored.name != cfg.model.name or _layout(stored) != _layout(cfg.model):
        raise UserInputError(f"{FIELD}: {path}: a hyper-search run of {stored.name} {_layout(stored)}; expected one of "
                             f"{cfg.model.name} {_layout(cfg.model)} (the scales map onto its blocks one by one)")


def load_repopt_scales(path: str) -> dict:
    """``{block name: (s3, s1, sI | None)}`` from a hyper-search checkpoint (EMA weights if present)."""
    import detmodels

    state = ckpt_io.load_checkpoint_state(path)
    weights = state["ema"]["module"] if state.get("ema") else state["model"]
    try:
        return detmodels.scales_from_state_dict(weights)
    except ValueError as exc:
        raise UserInputError(f"{FIELD}: {path}: {exc}") from None


def apply_repopt_init(cfg: TrainConfig, model: Any) -> None:
    """With ``train.optimizer.name: repopt``: every RealVGG kernel set to ``s3·W3 + s1·pad(W1) + sI·I``
    from the hyper-search scales, which are kept as ``model.repopt_scales``. Otherwise nothing."""
    if cfg.train.optimizer.name != "repopt":
        return
    import detmodels

    scales = load_repopt_scales(str(cfg.train.optimizer.repopt_scales))
    try:
        detmodels.init_from_scales_(model, scales)
    except ValueError as exc:
        raise UserInputError(f"{FIELD}: {cfg.train.optimizer.repopt_scales}: {exc}") from None
    model.repopt_scales = scales


def repopt_masks(model: Any) -> dict | None:
    """The gradient masks of a model prepared by :func:`apply_repopt_init` (on its current device), else None."""
    scales = getattr(model, "repopt_scales", None)
    if scales is None:
        return None
    import detmodels

    return detmodels.grad_masks(model, scales)

"""Start training from a checkpoint of another class count (fine-tuning): load every tensor that
matches by name and shape, keep the class-dependent predictors freshly initialised and say so.

The class predictors (RTMDet ``bbox_head.rtm_cls.*``, YOLOv6 ``head.cls_preds.*``, RetinaNet
``head.cls_pred.*``, YOLOv3 ``heads.*.pred.*``) have ``a·C + b`` output channels for C classes; a
checkpoint with another C cannot fill them. They keep the fresh module's initialisation, which for
every family is the focal-loss prior-probability bias −log((1−π)/π), π = 0.01 (RetinaNet,
Lin et al. 2017 §4.1; RTMDet and YOLOv6 heads use the same prior): neither zeroed nor copied.

A checkpoint of which less than ``min_fraction`` of the model's tensors fit is of another model and
is refused (:class:`~detflow.errors.UserInputError`, one line, exit 2 at the CLI).

>>> report = load_pretrained(model, "runs/coco80/best")        # doctest: +SKIP
>>> report.lines()[0]                                          # doctest: +SKIP
'pretrained: loaded 470/476 tensors from runs/coco80/best; re-initialised 6 class-dependent tensors (bbox_head.rtm_cls.*: 80 → 4 classes)'
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import UserInputError

__all__ = ["SkippedTensor", "LoadReport", "load_pretrained", "check_pretrained", "checkpoint_weights", "log_report",
           "tensor_group", "REPORT_ARTIFACT"]

REPORT_ARTIFACT = "pretrained_load.json"
_MAX_GROUPS = 6  # groups named per log line; more are counted, not named


@dataclasses.dataclass(frozen=True)
class SkippedTensor:
    """A tensor present in both, not loaded because its shape differs.

    ``class_dependent``: only dim 0 differs and it is ``a·C + b`` for both class counts (a ≥ 1, b ≥ 0),
    i.e. a class predictor.
    """

    name: str
    checkpoint_shape: tuple[int, ...]
    model_shape: tuple[int, ...]
    class_dependent: bool


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did. Tensor names are ``model.state_dict()`` keys.

    Attributes:
        source: the checkpoint (path as given, or ``"<state dict>"``).
        source_model / model: registered model names (``None`` when unknown).
        source_classes / num_classes: class counts of the checkpoint and of the model.
        total: tensors in the model's state dict (parameters and buffers).
        loaded: tensors copied from the checkpoint.
        skipped: tensors of both with another shape (left as initialised).
        missing: model tensors the checkpoint lacks (left as initialised).
        unexpected: checkpoint tensors the model lacks (ignored).
    """

    source: str
    source_model: str | None
    model: str | None
    source_classes: int | None
    num_classes: int | None
    total: int
    loaded: tuple[str, ...]
    skipped: tuple[SkippedTensor, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]

    @property
    def fraction(self) -> float:
        """Share of the model's tensors loaded, in [0, 1]."""
        return len(self.loaded) / self.total if self.total else 0.0

    @property
    def reinitialised(self) -> tuple[SkippedTensor, ...]:
        """The class-dependent tensors kept freshly initialised."""
        return tuple(s for s in self.skipped if s.class_dependent)

    def lines(self) -> list[str]:
        """Log lines: the summary (with the class-dependent groups), then one line per other kind of
        tensor not loaded (other shape, missing, unexpected), each naming its groups."""
        head = f"pretrained: loaded {len(self.loaded)}/{self.total} tensors from {self.source}"
        reinit = self.reinitialised
        if reinit:
            classes = f"{self.source_classes} → {self.num_classes} classes"
            head += (f"; re-initialised {len(reinit)} class-dependent tensors ("
                     + _named(f"{g}: {classes}" for g in _groups(s.name for s in reinit)) + ")")
        out = [head]
        other = [s for s in self.skipped if not s.class_dependent]
        if other:
            shapes = {}
            for s in other:
                shapes.setdefault(tensor_group(s.name), f"{list(s.checkpoint_shape)} → {list(s.model_shape)}")
            out.append(f"pretrained: kept {len(other)} tensors of another shape as initialised ("
                       + _named(f"{g}: {v}" for g, v in shapes.items()) + ")")
        if self.missing:
            out.append(f"pretrained: kept {len(self.missing)} tensors the checkpoint lacks as initialised ("
                       + _named(_groups(self.missing)) + ")")
        if self.unexpected:
            out.append(f"pretrained: ignored {len(self.unexpected)} checkpoint tensors the model lacks ("
                       + _named(_groups(self.unexpected)) + ")")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``pretrained_load.json`` artifact)."""
        d = dataclasses.asdict(self)
        d["skipped"] = [{**s, "checkpoint_shape": list(s["checkpoint_shape"]), "model_shape": list(s["model_shape"])}
                        for s in d["skipped"]]
        d.update(loaded=list(self.loaded), missing=list(self.missing), unexpected=list(self.unexpected),
                 fraction=round(self.fraction, 4))
        return d


def tensor_group(name: str) -> str:
    """``bbox_head.rtm_cls.0.weight`` → ``bbox_head.rtm_cls.*``; ``heads.2.pred.bias`` → ``heads.*.pred.*``
    (indices and the last component replaced by ``*``)."""
    parts = ["*" if p.isdigit() else p for p in name.split(".")[:-1]]
    while parts and parts[-1] == "*":
        parts.pop()
    return ".".join([*parts, "*"])


def _groups(names: Any) -> list[str]:
    return list(dict.fromkeys(tensor_group(n) for n in names))


def _named(items: Any) -> str:
    items = list(items)
    more = f", … {len(items) - _MAX_GROUPS} more" if len(items) > _MAX_GROUPS else ""
    return ", ".join(items[:_MAX_GROUPS]) + more


def _class_dependent(ckpt: tuple[int, ...], own: tuple[int, ...], src_c: int | None, dst_c: int | None) -> bool:
    """Only dim 0 differs, and ``ckpt[0] = a·src_c + b``, ``own[0] = a·dst_c + b`` with integers a ≥ 1, b ≥ 0
    (e.g. RTMDet a=1, RetinaNet a=9 anchors, YOLOv3-ASFF a=4 slots, b=4·5)."""
    if len(ckpt) != len(own) or not ckpt or ckpt[1:] != own[1:] or ckpt[0] == own[0]:
        return False
    if src_c is None or dst_c is None or src_c == dst_c:
        return False
    a, rem = divmod(ckpt[0] - own[0], src_c - dst_c)
    return rem == 0 and a >= 1 and ckpt[0] - a * src_c >= 0


def checkpoint_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights of a detflow checkpoint (its EMA weights when it has them, as training uses them
    for evaluation) and its ``meta.json``."""
    from ..engine import checkpoint as ckpt_io

    state = ckpt_io.load_checkpoint_state(path)
    weights = state["ema"]["module"] if state.get("ema") else state["model"]
    return weights, ckpt_io.read_meta(path)


def _compare(own: Mapping[str, torch.Tensor], weights: Mapping[str, Any], src_c: int | None,
             dst_c: int | None) -> tuple[dict[str, Any], list[SkippedTensor]]:
    usable, skipped = {}, []
    for name, tensor in own.items():
        if name not in weights:
            continue
        theirs = weights[name]
        if tuple(theirs.shape) == tuple(tensor.shape):
            usable[name] = theirs
        else:
            ck, mine = tuple(theirs.shape), tuple(tensor.shape)
            skipped.append(SkippedTensor(name, ck, mine, _class_dependent(ck, mine, src_c, dst_c)))
    return usable, skipped


def load_pretrained(model: torch.nn.Module, weights: str | os.PathLike | Mapping[str, Any], *,
                    model_name: str | None = None, source_model: str | None = None,
                    source_classes: int | None = None, min_fraction: float = 0.5, dry_run: bool = False) -> LoadReport:
    """Load ``weights`` into ``model`` where names and shapes match; everything else keeps the model's
    fresh initialisation (class predictors: the family's prior-probability bias).

    Args:
        model: the freshly built detector (``model.num_classes`` is read when present).
        weights: a detflow checkpoint directory or URI (its EMA weights when present; model name and
            class count from its ``meta.json``), or a state dict.
        model_name: the model's registered name, for the report and errors.
        source_model / source_classes: the checkpoint's model and class count (a state dict has no meta).
        min_fraction: refuse when fewer of the model's tensors than this fit.
        dry_run: compare only, load nothing (``model`` may live on the ``meta`` device).

    Returns:
        The :class:`LoadReport`.

    Raises:
        UserInputError: fewer than ``min_fraction`` of the tensors fit (a checkpoint of another model).
    """
    if isinstance(weights, Mapping):
        source, state = "<state dict>", weights
    else:
        source = str(weights)
        state, meta = checkpoint_weights(weights)
        source_model = source_model or meta.get("model")
        source_classes = source_classes if source_classes is not None else meta.get("num_classes")
    num_classes = getattr(model, "num_classes", None)
    src_c = int(source_classes) if source_classes is not None else None
    dst_c = int(num_classes) if num_classes is not None else None
    own = model.state_dict()
    usable, skipped = _compare(own, state, src_c, dst_c)
    report = LoadReport(source=source, source_model=source_model, model=model_name, source_classes=src_c,
                        num_classes=dst_c, total=len(own), loaded=tuple(usable), skipped=tuple(skipped),
                        missing=tuple(k for k in own if k not in state),
                        unexpected=tuple(k for k in state if k not in own))
    if report.fraction < min_fraction:
        theirs = repr(source_model) if source_model else "an unknown model"
        raise UserInputError(
            f"{source}: model.pretrained: a checkpoint of {theirs} does not fit "
            f"model {model_name or type(model).__name__!r}: only {len(usable)}/{len(own)} tensors match by name "
            f"and shape (need {min_fraction:.0%}); use a checkpoint of the same model")
    if not dry_run:
        model.load_state_dict(usable, strict=False)
    return report


def check_pretrained(cfg: Any) -> LoadReport | None:
    """Before any worker starts: refuse a ``model.pretrained`` checkpoint of another model (the
    :func:`load_pretrained` check against the config's model, built on the ``meta`` device: no
    weights allocated). ``cfg``: a resolved :class:`~detflow.config.TrainConfig`."""
    if not cfg.model.pretrained:
        return None
    import detmodels

    with torch.device("meta"):
        model = detmodels.create_model(cfg.model.name, num_classes=int(cfg.model.num_classes),
                                       **cfg.model.create_kwargs())
    return load_pretrained(model, cfg.model.pretrained, model_name=cfg.model.name, dry_run=True)


def log_report(report: LoadReport | None, logger: Any = None) -> None:
    """Write ``report``'s lines to the training log and, when ``logger`` (a worker's
    :class:`~detflow.train.worker.EpochLogger`) has an MLflow run, the report as the
    ``pretrained_load.json`` artifact (skipped with a warning while MLflow is down)."""
    from ..engine.loop import emit

    if report is None:
        return
    for line in report.lines():
        emit(line)
    run = getattr(getattr(logger, "metrics", None), "run", None)
    if run is None:
        return
    from .. import tracking

    try:
        run.log_dict(report.to_dict(), REPORT_ARTIFACT)
    except tracking.TrackingUnavailable as exc:
        emit(f"warning: {exc}")

"""The single-process training loop every family trains with (detectron2 ``SimpleTrainer`` spirit).

It talks to a detector only through ``forward`` / ``loss`` / ``postprocess`` / ``set_epoch`` /
``distill_loss`` (see ``detmodels.base.Detector``), so the same loop trains RTMDet, YOLOv6, SpineNet
and YOLOv3-ASFF. Ray Train's worker function (``detflow.train.worker``) wraps it with DDP, and
``detflow bench train`` runs it bare to measure the platform's overhead.

One step: data → (autocast) forward → ``loss`` (+ ``distill_loss`` against a teacher, weighted by the
cosine decay α(e) = 1 − 0.99·(1 − cos(πe/E))/2 of YOLOv6 §2.4) → (scaled) backward → optional grad
clipping → optimizer step → per-iteration LR schedule → EMA update. Time waiting for data and time
computing are measured separately.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..data.transforms import normalize_images
from ..errors import RuntimeFailure
from .ema import ModelEMA, unwrap_model
from .schedules import IterLRScheduler

__all__ = ["TrainLoop", "EpochStats", "distill_alpha", "evaluate_model", "move_targets", "reduce_stats",
           "primary_metric", "autocast_dtype", "EarlyStopping"]


def distill_alpha(epoch: int, epochs: int, decay: str = "cosine") -> float:
    """YOLOv6 KD weight decay: 1 at the first epoch → 0.01 at the end (``decay='none'``: 1)."""
    if decay != "cosine":
        return 1.0
    return 1.0 - 0.99 * (1.0 - math.cos(math.pi * epoch / max(epochs, 1))) / 2.0


# evaluate_coco keys -> logged names (val/bbox_mAP50, val/segm_mAP …), as the sweeps and workflows use
METRIC_NAMES = {"AP": "mAP", "AP50": "mAP50", "AP75": "mAP75", "APs": "mAP_s", "APm": "mAP_m", "APl": "mAP_l",
                "AR1": "AR1", "AR10": "AR10", "AR100": "AR100"}


def primary_metric(task: str) -> str:
    """The metric that selects the best checkpoint: segm mAP for instance segmentation, else bbox mAP."""
    return "val/segm_mAP" if task == "segm" else "val/bbox_mAP"


@dataclasses.dataclass
class EarlyStopping:
    """``train.patience``: stop once the watched metric has not improved (by more than ``min_delta``)
    for ``patience`` epochs. Fed by rank 0 at every evaluated epoch; its state goes into the
    checkpoint so a resumed run keeps counting.

    >>> es = EarlyStopping(patience=2)
    >>> [es.update(epoch, ap) for epoch, ap in enumerate([0.30, 0.35, 0.34, 0.35])]
    [False, False, False, True]
    """

    patience: int
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = -1
    stopped_epoch: int | None = None

    def update(self, epoch: int, value: float) -> bool:
        """Record ``value`` of ``epoch``; True when training should stop after this epoch."""
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.best_epoch = float(value), int(epoch)
        elif epoch - self.best_epoch >= self.patience:
            self.stopped_epoch = int(epoch)
        return self.stopped_epoch is not None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.best, self.best_epoch = state.get("best"), int(state.get("best_epoch", -1))
            self.stopped_epoch = state.get("stopped_epoch")


AMP_DEVICES = ("cuda", "cpu")  # where torch.autocast runs bf16


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device``; ``None``: full precision.

    ``bf16`` autocasts on CUDA and on CPU; ``fp16`` only on CUDA (CPU fp16 kernels are slow and
    many are missing, and fp16 needs a GradScaler): on CPU it falls back to full precision, which
    :class:`TrainLoop` says in a one-line warning (a config with ``scaling.gpus_per_worker: 0`` is
    refused at validation instead). ``amp='off'`` and other devices: ``None``.

    >>> autocast_dtype("bf16", torch.device("cpu")), autocast_dtype("fp16", torch.device("cpu"))
    (torch.bfloat16, None)
    """
    if amp == "bf16" and device.type in AMP_DEVICES:
        return torch.bfloat16
    if amp == "fp16" and device.type == "cuda":
        return torch.float16
    return None


CUDA_SYNC_EVERY = 10  # steps between host reads of the loss terms on CUDA


def _read_terms(terms: dict[str, torch.Tensor], epoch: int, step: int, steps: int) -> dict[str, float]:
    """``terms`` as floats (a host sync); a non-finite value in any of the last ``steps`` steps
    (up to optimizer step ``step``) is a :class:`RuntimeFailure`."""
    values = {k: float(v) for k, v in terms.items()}
    if not all(math.isfinite(v) for v in values.values()):
        where = f"step {step}" if steps == 1 else f"steps {step - steps + 1}–{step}"
        detail = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise RuntimeFailure(f"non-finite loss at epoch {epoch} {where}: {detail}")
    return values


def move_targets(targets: Sequence[dict], device: torch.device) -> list[dict]:
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


@dataclasses.dataclass
class EpochStats:
    """What one epoch measured on this process (sums; :meth:`summary` gives means).

    ``data_time`` is the time spent waiting for the loader's next batch, ``step_time`` the rest of the
    epoch (host→device copy, forward, backward, optimizer step, loss reads), so
    ``train/data_wait_fraction`` = data / (data + step) tells whether the epoch was input-bound.
    """

    losses: dict[str, float] = dataclasses.field(default_factory=lambda: defaultdict(float))
    steps: int = 0
    images: int = 0
    data_time: float = 0.0
    step_time: float = 0.0
    wall_time: float = 0.0
    lr: float = 0.0

    def summary(self, world_size: int = 1) -> dict[str, float]:
        n = max(self.steps, 1)
        out = {f"train/{k}": v / n for k, v in self.losses.items()}
        out["train/loss"] = sum(v for k, v in self.losses.items() if not k.startswith("loss_kd")) / n
        out.update({
            "train/lr": self.lr,
            "train/images_per_s": world_size * self.images / max(self.wall_time, 1e-9),
            "train/data_time_s": self.data_time / n,
            "train/step_time_s": self.step_time / n,
            # share of the step (waiting for the loader + computing) spent waiting for the next batch:
            # near 1 the loader is the bottleneck, near 0 the model is
            "train/data_wait_fraction": self.data_time / max(self.data_time + self.step_time, 1e-9),
            "train/epoch_time_s": self.wall_time,
        })
        return out


MAX_REDUCED = ("train/data_wait_fraction",)  # the worst rank: one starved rank stalls every rank's all-reduce


def reduce_stats(summary: dict[str, float]) -> dict[str, float]:
    """Average loss terms and timings over DDP ranks; ``train/data_wait_fraction`` takes the maximum
    over ranks (no-op without an initialised process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return summary
    out = dict(summary)
    keys = sorted(k for k in summary if k not in ("train/images_per_s", "train/lr") and k not in MAX_REDUCED)
    t = torch.tensor([summary[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    out.update({k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist())})
    maxed = [k for k in MAX_REDUCED if k in summary]
    if maxed:
        m = torch.tensor([summary[k] for k in maxed], dtype=torch.float64)
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
        out.update({k: float(v) for k, v in zip(maxed, m.tolist())})
    return out


def emit(line: str) -> None:
    """Write one line to stdout (not ``print``: Ray Train patches it and would echo it twice)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _Progress:
    """A rich progress bar on a terminal; plain log lines otherwise (Ray workers, CI logs)."""

    def __init__(self, enabled: bool, epoch: int, epochs: int, total: int):
        self.enabled, self.total, self.label = enabled, total, f"epoch {epoch + 1}/{epochs}"
        self.bar = None
        self.every = max(total // 5, 1)
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self.task = self.bar.add_task(self.label, total=total, info="")
            self.bar.start()

    def update(self, step: int, info: str, eta_s: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total:
            emit(f"{self.label} [{step}/{self.total}] {info} eta {eta_s:.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class TrainLoop:
    """Trains a detector epoch by epoch; owns no data and no tracking.

    Args:
        model: a ``detmodels.Detector`` (possibly wrapped in DDP), already on ``device``.
        optimizer / scheduler: see :mod:`detflow.engine.optim` and :mod:`detflow.engine.schedules`.
        ema: optional :class:`ModelEMA`, updated after every optimizer step.
        amp: ``off`` | ``bf16`` | ``fp16``: autocast of forward + loss (bf16 on CUDA and CPU; fp16 on
            CUDA only, with a GradScaler; see :func:`autocast_dtype`). Assignment, IoU and loss
            reductions run in float32 whatever the setting (``detmodels.ops.float32_guard``).
        grad_clip: max global grad norm, or ``None``.
        teacher: optional frozen teacher detector; adds ``distill_loss(weight=distill_weight·α(e))``.
        max_steps_per_epoch: cap on steps per epoch (smoke runs, benchmarks).
        on_step: optional callback ``on_step(step_in_epoch, loss_terms)`` (e.g. to crash tests).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: IterLRScheduler, *,
                 device: torch.device | str = "cpu", ema: ModelEMA | None = None, amp: str = "off",
                 grad_clip: float | None = None, teacher: nn.Module | None = None,
                 distill_weight: float = 1.0, distill_decay: str = "cosine", max_epochs: int = 1,
                 max_steps_per_epoch: int | None = None, progress: bool = False,
                 on_step: Callable[[int, dict[str, float]], None] | None = None):
        self.model, self.optimizer, self.scheduler, self.ema = model, optimizer, scheduler, ema
        self.device = torch.device(device)
        self.amp_dtype = autocast_dtype(amp, self.device)
        if amp != "off" and self.amp_dtype is None:
            emit(f"warning: train.amp={amp} is not supported on {self.device.type} (fp16 needs CUDA; use bf16 "
                 "on CPU): training in full precision (float32)")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.grad_clip, self.teacher = grad_clip, teacher
        self.distill_weight, self.distill_decay = distill_weight, distill_decay
        self.max_epochs, self.max_steps = max_epochs, max_steps_per_epoch
        self.progress, self.on_step = progress, on_step
        self.step = 0  # global optimizer steps done

    # ------------------------------------------------------------------ one step
    def _losses(self, images: torch.Tensor, targets: list[dict], epoch: int) -> dict[str, torch.Tensor]:
        core = unwrap_model(self.model)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            outputs = self.model(images)
            losses = dict(core.loss(outputs, targets))
            if self.teacher is not None:
                with torch.no_grad():
                    t_out = self.teacher(images)
                w = self.distill_weight * distill_alpha(epoch, self.max_epochs, self.distill_decay)
                losses.update(core.distill_loss(outputs, t_out, targets, weight=w))
        return losses

    def _model_input(self, images: torch.Tensor) -> torch.Tensor:
        """A collated batch on the training device, normalised there when it is uint8 (the training
        pipelines' batches: a 4× smaller copy, and the normalisation off the loader workers)."""
        return normalize_images(images.to(self.device, non_blocking=True),
                                getattr(unwrap_model(self.model), "input_spec", None))

    def _step(self, images: torch.Tensor, targets: list[dict], epoch: int) -> dict[str, torch.Tensor]:
        """One optimisation step without a host sync; returns the detached loss terms on the device."""
        losses = self._losses(images, targets, epoch)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return {k: v.detach() for k, v in losses.items()}

    def train_step(self, images: torch.Tensor, targets: list[dict], epoch: int) -> dict[str, float]:
        """One optimisation step on a batch (uint8 or normalised); returns the loss terms as floats (a host sync)."""
        return _read_terms(self._step(self._model_input(images), targets, epoch), epoch, self.step - 1, 1)

    def sync_every(self) -> int:
        """Steps between reads of the loss terms: every step on CPU (free there); on CUDA every
        :data:`CUDA_SYNC_EVERY` steps, so the host queues kernels ahead instead of waiting on each step."""
        return CUDA_SYNC_EVERY if self.device.type == "cuda" else 1

    # ------------------------------------------------------------------ one epoch
    def steps_in(self, loader: Iterable) -> int:
        n = len(loader)  # type: ignore[arg-type]
        return min(n, self.max_steps) if self.max_steps else n

    def train_epoch(self, loader: Iterable, epoch: int) -> EpochStats:
        """Train one epoch over ``loader`` batches ``(images, targets, metas)``.

        Loss terms stay on the device and are summed there; they are read (and checked for
        non-finite values) every :meth:`sync_every` steps and at the end of the epoch.
        """
        self.model.train()
        unwrap_model(self.model).set_epoch(epoch, self.max_epochs)
        stats, total, every = EpochStats(), self.steps_in(loader), self.sync_every()
        bar = _Progress(self.progress, epoch, self.max_epochs, total)
        window: dict[str, torch.Tensor] = {}
        start = t_prev = time.perf_counter()
        try:
            for i, (images, targets, _metas) in enumerate(loader):
                if i >= total:
                    break
                t_data = time.perf_counter()
                stats.data_time += t_data - t_prev
                terms = self._step(self._model_input(images), move_targets(targets, self.device), epoch)
                window = {k: window[k] + v if k in window else v for k, v in terms.items()}
                stats.steps += 1
                stats.images += images.shape[0]
                if stats.steps % every == 0 or stats.steps == total:
                    self._flush(window, stats, epoch, i, bar, start, total)
                    window = {}
                t_prev = time.perf_counter()  # the bookkeeping above is neither data wait nor step
        finally:
            bar.close()
        stats.wall_time = time.perf_counter() - start
        stats.step_time = stats.wall_time - stats.data_time
        stats.lr = self.optimizer.param_groups[0]["lr"]
        return stats

    def _flush(self, window: dict[str, torch.Tensor], stats: EpochStats, epoch: int, i: int, bar: _Progress,
               start: float, total: int) -> None:
        """Read the summed loss terms of the steps since the last read into ``stats`` (one host sync)."""
        steps = (stats.steps - 1) % self.sync_every() + 1
        sums = _read_terms(window, epoch, self.step - 1, steps)
        for k, v in sums.items():
            stats.losses[k] += v
        mean = {k: v / steps for k, v in sums.items()}
        if self.on_step is not None:
            self.on_step(i, mean)
        elapsed = time.perf_counter() - start
        info = " ".join(f"{k.removeprefix('loss_')}={v:.3f}" for k, v in mean.items())
        bar.update(stats.steps, f"{info} {stats.images / elapsed:.1f} img/s", elapsed / stats.steps * (total - stats.steps))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"model": unwrap_model(self.model).state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap_model(self.model).load_state_dict(state["model"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])

    def eval_model(self) -> nn.Module:
        """The weights to evaluate and ship: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else unwrap_model(self.model)


@torch.no_grad()
def predict_batches(model: nn.Module, loader: Iterable, *, device: torch.device | str = "cpu",
                    score_thr: float = 0.001, nms_iou: float = 0.65, max_det: int = 100,
                    max_batches: int | None = None) -> tuple[list, list[int]]:
    """Run ``model`` + ``postprocess`` over ``loader``; returns (Detections per image, image ids)."""
    model.eval()
    dets, ids = [], []
    for b, (images, _targets, metas) in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        outputs = model(normalize_images(images.to(device), getattr(model, "input_spec", None)))
        dets.extend(model.postprocess(outputs, [tuple(m["orig_size"]) for m in metas], score_thr=score_thr,
                                      nms_iou=nms_iou, max_det=max_det,
                                      scale_factors=[float(m["scale"]) for m in metas]))
        ids.extend(int(m["image_id"]) for m in metas)
    cpu = [dataclasses.replace(d, **{f.name: getattr(d, f.name).cpu() for f in dataclasses.fields(d)
                                     if torch.is_tensor(getattr(d, f.name))}) for d in dets]
    return cpu, ids


def evaluate_model(model: nn.Module, loader: Iterable, coco: Any, category_ids: Sequence[int], *,
                   device: torch.device | str = "cpu", score_thr: float = 0.001, nms_iou: float = 0.65,
                   max_det: int = 100, plot_pr: str | None = None,
                   plot_confusion: str | None = None) -> dict[str, float]:
    """COCO metrics of ``model`` on a val loader: ``val/bbox_mAP``, ``val/bbox_mAP50``… (+ ``val/segm_*``).
    ``plot_pr`` / ``plot_confusion``: also write the PR curve / the detection confusion matrix (PNG)."""
    from ..evaluation import detections_to_coco, evaluate_coco

    dets, ids = predict_batches(model, loader, device=device, score_thr=score_thr, nms_iou=nms_iou, max_det=max_det)
    results = detections_to_coco(dets, ids, list(category_ids))
    if plot_confusion is not None:
        from ..evaluation.confusion import write_confusion_plot

        write_confusion_plot(coco.dataset, results, list(category_ids), plot_confusion)
    metrics: dict[str, float] = {}
    iou_types = ["bbox", "segm"] if getattr(unwrap_model(model), "task", "bbox") == "segm" else ["bbox"]
    for iou_type in iou_types:
        out = evaluate_coco(coco, results, iou_type, plot_pr=plot_pr if iou_type == iou_types[-1] else None)
        metrics.update({f"val/{iou_type}_{METRIC_NAMES[k]}": float(v) for k, v in out.items() if k in METRIC_NAMES})
    return metrics

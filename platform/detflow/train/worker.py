"""The per-worker training function Ray Train runs (one process per worker, DDP between them).

``train_worker(config)`` builds data, model, optimiser, schedule and EMA from the resolved
:class:`~detflow.config.TrainConfig`, restores the latest Ray checkpoint when there is one (worker
restart or driver recovery) and drives :class:`detflow.engine.TrainLoop` epoch by epoch. At each
checkpoint epoch rank 0 writes the checkpoint directory (atomically), reports it with
``ray.train.report``, only then swaps it in as ``best/`` when it is the best so far, and logs the
epoch's metrics to MLflow — each epoch at most once: epochs already in the run's history (a restart
re-running an epoch) are not logged again.
A tracking outage never fails the run: the metrics wait in the run directory's spool and are re-sent
at the next epoch (:class:`EpochLogger`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from ..config.train import TrainConfig
from ..engine import checkpoint as ckpt_io
from ..engine.ema import build_ema
from ..engine.loop import EarlyStopping, TrainLoop, emit, evaluate_model, primary_metric, reduce_stats
from ..engine.optim import build_optimizer
from ..engine.schedules import IterLRScheduler, build_schedule
from ..scratch import scratch_dir
from .data import TrainData, build_train_data
from .repopt import apply_repopt_init, repopt_masks

__all__ = ["train_worker", "EpochLogger", "build_model", "ddp_find_unused", "ddp_kwargs", "PID_DIR_ENV", "FIND_UNUSED_ENV"]

# When set, each worker writes an empty file ``rank<r>-<pid>`` there (fault-injection tests, debugging).
PID_DIR_ENV = "DETFLOW_WORKER_PID_DIR"
# "1": DDP searches for unused parameters whatever the model says (a custom model that needs it).
FIND_UNUSED_ENV = "DETFLOW_DDP_FIND_UNUSED"


def ddp_find_unused(model: torch.nn.Module) -> bool:
    """DDP's ``find_unused_parameters``: only for a model whose loss can leave trainable parameters
    without a gradient (``Detector.has_unused_train_params``), or when ``DETFLOW_DDP_FIND_UNUSED=1``.
    Otherwise DDP skips the extra autograd-graph traversal it would do every step."""
    return bool(getattr(model, "has_unused_train_params", False)) or os.environ.get(FIND_UNUSED_ENV) == "1"


def ddp_kwargs(cfg: TrainConfig, model: torch.nn.Module) -> dict[str, Any]:
    """``DistributedDataParallel`` arguments of a worker: gradients are views into the all-reduce
    buckets (no copy in or out of them) of ``scaling.bucket_cap_mb`` MiB each."""
    return {"find_unused_parameters": ddp_find_unused(model), "gradient_as_bucket_view": True,
            "bucket_cap_mb": cfg.scaling.bucket_cap_mb}


class EpochLogger:
    """Rank 0's per-epoch metrics on the run's MLflow run, exactly once and outage-proof
    (:class:`detflow.tracking.EpochMetrics`: spooled to ``spool`` first, retried with backoff and
    jitter, re-sent at the next epoch while MLflow is down). Without a run it logs nothing."""

    def __init__(self, run_id: str | None, spool: str | Path | None = None):
        from .. import tracking

        self.run_id = run_id
        self.metrics: Any = None
        if run_id:
            run = tracking.worker_run(run_id)
            self.metrics = tracking.EpochMetrics(run, tracking.MetricSpool(spool or tracking.spool_file(None, run_id)))

    def log(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Spool and send ``metrics`` of ``epoch`` (plus anything still pending); False while MLflow is down."""
        if self.metrics is None:
            return False
        from .. import tracking

        return self.metrics.log(epoch, {**metrics, **tracking.throughput_metrics(metrics)})

    def finish(self, wait_s: float = 60.0) -> bool:
        """At the end of training: keep re-sending what is pending for up to ``wait_s`` seconds."""
        return True if self.metrics is None else self.metrics.flush_until(wait_s)

    def log_artifact(self, path: str | Path, artifact_path: str) -> None:
        """Best effort (a plot): skipped with a warning when MLflow is down."""
        from .. import tracking

        if self.metrics is None:
            return
        try:
            self.metrics.run.log_artifact(path, artifact_path)
        except tracking.TrackingUnavailable as exc:
            emit(f"warning: {exc}")


def build_model(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    """``detmodels.create_model`` with the config's overrides; ``model.pretrained`` weights loaded
    where names and shapes match (:func:`detflow.train.finetune.load_pretrained`: a different class
    count leaves the class predictors fresh; a checkpoint of another model is refused). With
    ``train.optimizer.name: repopt`` the RealVGG kernels start from the hyper-search scales first
    (:func:`detflow.train.repopt.apply_repopt_init`; pretrained weights then overwrite them). The
    :class:`~detflow.train.finetune.LoadReport` is kept as ``model.pretrained_report``."""
    import detmodels

    model = detmodels.create_model(cfg.model.name, num_classes=num_classes, **cfg.model.create_kwargs())
    apply_repopt_init(cfg, model)  # train.optimizer.name repopt: kernels from the hyper-search scales
    if cfg.model.pretrained:
        from .finetune import load_pretrained

        model.pretrained_report = load_pretrained(model, cfg.model.pretrained, model_name=cfg.model.name)
    return model


def build_teacher(cfg: TrainConfig, student: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """The frozen teacher of ``cfg.distill`` (EMA weights of its checkpoint), with the student and the
    teacher both set to the section's temperature and feature switch; ``None`` without distillation."""
    d = cfg.distill
    if d is None:
        return None
    teacher = ckpt_io.load_checkpoint_model(d.teacher)[0].to(device)
    for model in (student, teacher):
        model.configure_distillation(temperature=d.temperature, feature=d.feature)
    return teacher.as_teacher()


def _build_loop(cfg: TrainConfig, model: torch.nn.Module, recipe: Any, steps: int, world: int,
                device: torch.device, teacher: torch.nn.Module | None, progress: bool) -> TrainLoop:
    optimizer = build_optimizer(model, recipe.optimizer, total_batch=cfg.train.batch_size * world,
                                masks=repopt_masks(model))
    schedule = build_schedule(recipe.schedule, epochs=cfg.train.epochs, iters_per_epoch=steps)
    ema = build_ema(model, recipe.ema)
    if ema is not None:
        ema.to(device)
    d = cfg.distill
    return TrainLoop(model, optimizer, IterLRScheduler(optimizer, schedule), device=device, ema=ema,
                     amp=cfg.train.amp, grad_clip=cfg.train.grad_clip, teacher=teacher,
                     distill_weight=d.weight if d else 1.0, distill_decay=d.decay if d else "none",
                     max_epochs=cfg.train.epochs, max_steps_per_epoch=cfg.train.max_steps_per_epoch,
                     progress=progress)


def _meta(cfg: TrainConfig, data: TrainData, epoch: int, metrics: dict, history: list, best: dict,
          resumed_from: int) -> dict:
    from ..version import __version__

    return {"model": cfg.model.name, "num_classes": data.num_classes, "category_ids": data.category_ids,
            "class_names": data.class_names, "epoch": epoch, "metrics": metrics, "history": history,
            "best": best, "task": data.task, "switch_epoch": data.recipe.switch_epoch,
            "resumed_from": resumed_from, "image_size": cfg.data.image_size, "detflow_version": __version__}


def _write_pid(rank: int) -> None:
    pid_dir = os.environ.get(PID_DIR_ENV)
    if pid_dir:
        Path(pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(pid_dir) / f"rank{rank}-{os.getpid()}").touch()


class _WorkerRun:
    """State of one worker for one attempt (a restart builds a new one from the checkpoint)."""

    def __init__(self, config: dict[str, Any]):
        import ray.train
        import ray.train.torch

        from ..ray_env import quiet_ray_train_worker_logs

        quiet_ray_train_worker_logs()
        self.cfg: TrainConfig = config["cfg"]  # resolved and validated once, by the driver
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.best_dir = config.get("best_dir")
        if self.best_dir and self.rank == 0:  # a publish cut short by a kill may have left its temporary
            from ..atomic import remove_temps

            remove_temps(Path(self.best_dir).parent)
        torch.set_num_threads(max(int(self.cfg.scaling.cpus_per_worker), 1))
        torch.manual_seed(self.cfg.train.seed + self.rank)
        self.device = ray.train.torch.get_device()
        _write_pid(self.rank)
        model = build_model(self.cfg, int(self.cfg.model.num_classes)).to(self.device)
        self.data = build_train_data(self.cfg, model.input_spec, rank=self.rank, world=self.world)
        if self.cfg.train.sync_bn and self.world > 1 and self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        teacher = build_teacher(self.cfg, model, self.device)
        self.loop = _build_loop(self.cfg, model, self.data.recipe, self.data.steps_per_epoch, self.world,
                                self.device, teacher, progress=bool(config.get("progress")) and self.rank == 0)
        # DDP wrapping after the EMA copy was taken from the bare module
        self.loop.model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs(self.cfg, model))
        self.logger = EpochLogger(config.get("run_id") if self.rank == 0 else None, config.get("spool"))
        if self.rank == 0:  # what the pretrained checkpoint filled and what it left fresh
            from .finetune import log_report

            log_report(getattr(model, "pretrained_report", None), self.logger)
        self.start_epoch, self.history, self.best = 0, [], {}
        e = self.cfg.train
        self.stopper = EarlyStopping(e.patience, e.min_delta) if e.patience else None
        self._restore(ray.train.get_checkpoint())
        self.stopped = bool(self.stopper and self.stopper.stopped_epoch is not None)  # resumed after the stop
        self.resumed_from = self.start_epoch  # first epoch this attempt trains (0: fresh start)

    def _restore(self, checkpoint: Any) -> None:
        if checkpoint is None:
            return
        with checkpoint.as_directory() as d:
            state = ckpt_io.load_checkpoint_state(d, map_location=self.device)
            meta = ckpt_io.read_meta(d)
        self.loop.load_state_dict(state)
        ckpt_io.set_rng_state(state["rng"])
        if self.rank:  # the RNG state saved is rank 0's: keep the other ranks' streams distinct
            torch.manual_seed(self.cfg.train.seed + 7919 * self.rank + int(state["epoch"]))
        self.start_epoch = int(state["epoch"]) + 1
        self.history, self.best = list(meta.get("history", [])), dict(meta.get("best", {}))
        self.data.load_state_dict(state.get("data"), epoch=self.start_epoch)
        if self.stopper is not None:  # the patience counter survives a restart
            self.stopper.load_state_dict(state.get("early_stop"))
        for past in self.history:  # epochs reported but not logged (an outage, a crash) go now, once
            self.logger.log(int(past.get("epoch", state["epoch"])), past)
        if self.rank == 0:
            emit(f"resumed from checkpoint of epoch {int(state['epoch']) + 1} (step {self.loop.step})")

    def _evaluate(self, epoch: int, last: bool, plot_dir: Path) -> dict[str, float]:
        e = self.cfg.train
        if self.rank != 0 or self.data.val is None or not (last or (epoch + 1) % e.eval_interval == 0):
            return {}
        # plots of the final evaluation; with patience any evaluated epoch may turn out to be the final one
        plots = last or self.stopper is not None
        return evaluate_model(self.loop.eval_model(), self.data.val_loader(), self.data.val.coco,
                              self.data.category_ids, device=self.device, score_thr=e.score_thr,
                              nms_iou=e.nms_iou, max_det=e.max_det,
                              plot_pr=str(plot_dir / "pr_curve.png") if plots else None,
                              plot_confusion=str(plot_dir / "confusion_matrix.png") if plots else None)

    def _early_stop(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Rank 0 feeds the val metric to the stopper; its decision is broadcast, so every DDP rank
        leaves the epoch loop after the same epoch."""
        if self.stopper is None:
            return False
        key = primary_metric(self.data.task)
        stop = self.rank == 0 and key in metrics and self.stopper.update(epoch, metrics[key])
        return _broadcast_flag(stop, self.device)

    def _is_better(self, metrics: dict[str, float]) -> bool:
        key = primary_metric(self.data.task)
        if key not in metrics:
            return self.data.val is None  # without val data the latest checkpoint is the best
        return not self.best or metrics[key] > self.best.get("value", float("-inf"))

    def _checkpoint(self, epoch: int, metrics: dict, tmp: Path) -> tuple[Any, bool]:
        import ray.train

        better = self._is_better(metrics)
        if better:
            key = primary_metric(self.data.task)
            self.best = {"metric": key, "value": metrics.get(key), "epoch": epoch, "metrics": metrics}
        early = ({**self.stopper.state_dict(), "metric": primary_metric(self.data.task)}
                 if self.stopper is not None else None)
        state = {**self.loop.state_dict(), "epoch": epoch, "rng": ckpt_io.rng_state(), "data": self.data.state_dict(),
                 "early_stop": early}
        meta = {**_meta(self.cfg, self.data, epoch, metrics, self.history, self.best, self.resumed_from),
                "early_stop": early}
        path = ckpt_io.save_checkpoint(tmp / f"epoch_{epoch:04d}", state=state, config=self.cfg, meta=meta)
        return ray.train.Checkpoint.from_directory(str(path)), better

    def run_epoch(self, epoch: int) -> bool:
        """Train, evaluate, checkpoint and log one epoch; True when early stopping ends the run here."""
        import ray.train

        e, last = self.cfg.train, epoch == self.cfg.train.epochs - 1
        stats = self.loop.train_epoch(self.data.train_loader(epoch), epoch)
        metrics = reduce_stats(stats.summary(self.world))
        with scratch_dir("ckpt") as tmp:
            metrics.update(self._evaluate(epoch, last, Path(tmp)))
            metrics["epoch"] = epoch
            stop = self._early_stop(epoch, metrics)
            last = last or stop  # the stop epoch is the final one: checkpointed, its plots logged
            self.history.append(metrics)
            checkpoint, better = None, False
            if self.rank == 0 and (last or (epoch + 1) % self.cfg.checkpoint.every == 0):
                checkpoint, better = self._checkpoint(epoch, metrics, Path(tmp))
            name = f"epoch_{epoch:04d}-{int(time.time())}" if checkpoint is not None else None
            # best/ only after the report: it never holds weights of an epoch that was not reported
            ckpt_io.report_then_publish(
                lambda: ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name),
                checkpoint.path if checkpoint is not None else None, self.best_dir, better)
            self.logger.log(epoch, metrics)
            for plot in ("pr_curve.png", "confusion_matrix.png"):
                if last and (Path(tmp) / plot).exists():
                    self.logger.log_artifact(Path(tmp) / plot, "plots")
        if self.rank == 0:
            line = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k in ("train/loss", "train/images_per_s", "val/bbox_mAP50", "val/segm_mAP50"))
            if "train/data_wait_fraction" in metrics:
                line += f" data_wait={metrics['train/data_wait_fraction']:.0%}"
            emit(f"epoch {epoch + 1}/{e.epochs} {line}")
        return stop


def _broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (as it is without an initialised process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def _system_monitor(run_id: str | None) -> Any:
    """MLflow system metrics of this node, from its local rank 0 (``node_id`` ``node<i>`` when the
    run spans several nodes); ``None`` on other ranks and without a run."""
    import ray.train

    from .. import tracking

    ctx = ray.train.get_context()
    if not run_id or ctx.get_local_rank() != 0:
        return None
    nodes = max(ctx.get_world_size() // max(ctx.get_local_world_size(), 1), 1)
    return tracking.start_system_metrics(run_id, node_id=f"node{ctx.get_node_rank()}" if nodes > 1 else None)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: ``{"cfg": the resolved TrainConfig, "run_id": MLflow run or
    None, "best_dir": where rank 0 publishes the best checkpoint, "progress": bool, "spool": the
    local metric spool file (default: :func:`detflow.tracking.spool_file`)}``."""
    from ..artifact_store import clear_cache

    from .. import tracking

    monitor = _system_monitor(config.get("run_id"))
    try:
        run = _WorkerRun(config)
        for epoch in range(run.start_epoch, run.cfg.train.epochs):
            if run.stopped or run.run_epoch(epoch):  # early stop: every rank leaves after the same epoch
                break
        run.logger.finish()
    finally:  # a worker is killed, not exited, when its run ends: remove the dataset copies now
        tracking.stop_system_metrics(monitor)
        clear_cache()

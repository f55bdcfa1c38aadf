"""``run_training``: one training = one Ray Train ``TorchTrainer`` run + one MLflow run.

Resolution happens on the driver: relative data paths are taken against the config file's
directory, the class count comes from the dataset, both datasets are checked (``check_coco``), and
the resolved config is what workers train with and what every checkpoint stores.

Storage layout (``storage`` = a local directory, default ``$DETFLOW_HOME/runs``, or ``s3://…``)::

    STORAGE/NAME-YYYYmmdd-HHMMSS-xxxxxx/ Ray Train run (RunConfig name + storage_path; random suffix,
                                         directory created exclusively: never shared by two runs)
        detflow_run.json                 MLflow run id + resolved config (for --resume), written atomically
        epoch_0004-<ts>/                 checkpoints reported to Ray (the last ``keep_last`` kept)
        best/                            the best checkpoint by val AP (swapped in atomically, only
                                         after its epoch was reported)

Fault tolerance: ``FailureConfig(max_failures)`` restarts the worker group from the latest
reported checkpoint; ``resume=True`` (``detflow train CONFIG --resume``) restarts the latest run of
the same config name and storage, which Ray Train V2 recovers from its stored state.

Example::

    from detflow.config import load_config, TrainConfig
    from detflow.train import run_training
    cfg = load_config(TrainConfig, "workflows/configs/rtmdet_tiny_synth.yaml")
    result = run_training(cfg, config_dir="workflows/configs")
    print(result.run_id, result.metrics.get("val/bbox_mAP50"), result.checkpoint)
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from ..config.train import TrainConfig
from ..errors import DataError, RuntimeFailure
from ..paths import resolve_path, state_dir

__all__ = ["TrainResult", "run_training", "resolve_train_config", "check_datasets", "latest_run", "RUN_MARKER"]

RUN_MARKER = "detflow_run.json"


@dataclasses.dataclass
class TrainResult:
    """What a training produced. ``checkpoint``: best checkpoint dir (by val AP; the last one without
    val data); ``metrics``: the best epoch's val metrics; ``history``: one dict per epoch;
    ``early_stop``: ``{"metric", "best", "best_epoch", "stopped_epoch"}`` (0-based epochs) with ``train.patience``."""

    run_id: str
    checkpoint: str
    last_checkpoint: str
    metrics: dict[str, float]
    history: list[dict[str, float]]
    storage_path: str
    wall_time_s: float
    early_stop: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- resolution
def _is_uri(path: str) -> bool:
    return "://" in path


def resolve_train_config(cfg: TrainConfig, config_dir: str | os.PathLike | None = None) -> TrainConfig:
    """``cfg`` with absolute data/checkpoint paths, a storage location and ``model.num_classes`` set:
    one overlay composed over ``cfg`` (:func:`detflow.config.compose.compose`), validated once."""
    from ..config.compose import Layer, compose
    from ..data.formats import resolve_data_format

    base = Path(config_dir).resolve() if config_dir is not None else None

    def path(p: str | None) -> str | None:
        return p if p is None or _is_uri(p) else str(resolve_path(p, base))

    resolved: dict[str, Any] = {"storage": path(cfg.storage) if cfg.storage else str(state_dir() / "runs")}
    for split in ("train", "val"):
        if getattr(cfg.data, split) is not None:
            for key in ("annotations", "images"):
                resolved[f"data.{split}.{key}"] = path(getattr(getattr(cfg.data, split), key))
    resolved.update(resolve_data_format(cfg.data.format, resolved))  # yolo/voc: converted to COCO once, cached
    if cfg.model.pretrained is not None:  # official | models:/NAME/VERSION | a checkpoint path
        from ..weights.resolve import resolve_pretrained

        resolved["model.pretrained"] = resolve_pretrained(cfg.model.pretrained, cfg.model.name, base)
    if getattr(cfg.model, "spec", None) is not None:  # SpineNet only
        resolved["model.spec"] = path(cfg.model.spec)
    if cfg.model.num_classes is None:
        resolved["model.num_classes"] = _count_categories(resolved["data.train.annotations"])
    if cfg.distill is not None:
        resolved["distill.teacher"] = path(cfg.distill.teacher)
    if cfg.train.optimizer.repopt_scales is not None:
        resolved["train.optimizer.repopt_scales"] = path(cfg.train.optimizer.repopt_scales)
    return compose(TrainConfig, Layer(cfg, f"training config {cfg.name!r}"), Layer(resolved, "resolved paths"))


def _count_categories(annotations: str) -> int:
    from ..artifact_store import local_path

    try:
        cats = json.loads(local_path(annotations).read_text()).get("categories") or []
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{annotations}: data.train.annotations: expected a readable COCO JSON file ({exc})") from None
    if not cats:
        raise DataError(f"{annotations}: categories: expected at least one category")
    return len(cats)


def check_datasets(cfg: TrainConfig) -> None:
    """Refuse a train/val split whose ``check_coco`` report has errors (DataError, one line each)."""
    from ..data import check_coco

    for split in (cfg.data.train, cfg.data.val):
        if split is not None:
            check_coco(split.annotations, split.images).raise_if_errors()


def check_distill(cfg: TrainConfig) -> None:
    """Refuse a ``distill`` section whose teacher is not a readable checkpoint, or that asks for feature
    distillation from a family without it (one-line UserInputError / ConfigError)."""
    if cfg.distill is None:
        return
    import detmodels

    from ..engine import checkpoint as ckpt_io
    from ..errors import ConfigError

    ckpt_io.read_meta(cfg.distill.teacher)
    if cfg.distill.feature:
        import torch

        with torch.device("meta"):  # only the class is needed: no weights are allocated or initialised
            model = detmodels.create_model(cfg.model.name, num_classes=1, **cfg.model.create_kwargs())
        if not model.supports_feature_distill:
            raise ConfigError([f"distill.feature: {cfg.model.name} has no feature distillation; expected false"])


# --------------------------------------------------------------------------- run directories
def _fs(storage: str):
    from .. import artifact_store

    if not _is_uri(storage):
        Path(storage).mkdir(parents=True, exist_ok=True)
    return artifact_store.filesystem(storage)


def _write_marker(storage: str, name: str, payload: dict) -> None:
    """``STORAGE/NAME/detflow_run.json``, written atomically (a local file through
    :func:`detflow.atomic.atomic_write`; an object store's single PUT is atomic by itself)."""
    from .. import artifact_store

    artifact_store.write_text(_join(storage, name, RUN_MARKER), json.dumps(payload, indent=2))


def _read_marker(storage: str, name: str) -> dict:
    """The marker of run directory ``name``; a truncated or corrupt one is a one-line error (exit 2)."""
    from .. import artifact_store
    from ..atomic import parse_json_state

    where = _join(storage, name, RUN_MARKER)
    hint = (f"delete the run directory {_join(storage, name)} (or that file) to start afresh, or run without "
            "--resume")
    try:
        text = artifact_store.read_text(where)
    except UnicodeDecodeError:
        text = "\0"  # not text: reported as corrupt below
    marker = parse_json_state(text, where, "run marker", hint)
    if not isinstance(marker.get("run_id"), str):
        from ..atomic import CorruptStateError

        raise CorruptStateError(f"{where}: corrupt run marker (no run_id); {hint}")
    return marker


# NAME-YYYYmmdd-HHMMSS, then a random suffix (``-3fa9c1``; older runs: none or ``-2``, ``-3`` …)
def _run_name_re(cfg_name: str):
    import re

    return re.compile(rf"^{re.escape(cfg_name)}-(\d{{8}}-\d{{6}})(?:-([0-9a-f]{{6}}|\d+))?$")


def _latest_run(storage: str, cfg_name: str) -> tuple[str, dict] | None:
    """(run directory name, marker) of the newest run of ``cfg_name`` under ``storage``, if any: the
    latest start second, and within one second the marker written last (its ``created`` time)."""
    import pyarrow.fs as pafs

    fs, root = _fs(storage)
    pattern = _run_name_re(cfg_name)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    stamps: dict[str, str] = {}
    for info in infos:
        match = pattern.match(info.base_name)
        if info.type == pafs.FileType.Directory and match:
            stamps[info.base_name] = match.group(1)
    for stamp in sorted(set(stamps.values()), reverse=True):
        found = []
        for name in sorted(n for n, s in stamps.items() if s == stamp):
            if fs.get_file_info(f"{root}/{name}/{RUN_MARKER}").type == pafs.FileType.File:
                marker = _read_marker(storage, name)
                found.append((float(marker.get("created") or 0.0), _legacy_rank(name), name, marker))
        if found:
            _, _, name, marker = max(found, key=lambda f: f[:3])
            return name, marker
    return None


def _legacy_rank(name: str) -> int:
    """Order of pre-suffix runs started in one second (``NAME-…-2`` after ``NAME-…``)."""
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() and len(tail) < 6 else 1


def _new_run_name(storage: str, cfg_name: str) -> str:
    """A fresh ``NAME-YYYYmmdd-HHMMSS-<6 hex>`` run directory, created here: locally with an exclusive
    ``mkdir`` (two runs started in the same second never share a directory); on an object store,
    where directories do not exist, the random suffix alone keeps names apart."""
    import secrets

    from ..atomic import mkdir_exclusive

    stamp = time.strftime('%Y%m%d-%H%M%S')
    for _ in range(100):
        name = f"{cfg_name}-{stamp}-{secrets.token_hex(3)}"
        if _is_uri(storage) or mkdir_exclusive(Path(storage) / name):
            return name
    raise RuntimeFailure(f"{storage}: could not create a fresh run directory for {cfg_name!r}")


def latest_run(cfg: TrainConfig, config_dir: str | os.PathLike | None = None) -> str | None:
    """Storage path of the newest run of ``cfg.name`` (what ``resume=True`` continues), or None."""
    cfg = resolve_train_config(cfg, config_dir)
    found = _latest_run(cfg.storage, cfg.name)
    return _join(cfg.storage, found[0]) if found else None


def _join(storage: str, *parts: str) -> str:
    return "/".join([storage.rstrip("/"), *parts])


# --------------------------------------------------------------------------- Ray
def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        from ..ray_env import init_ray

        init_ray(log_to_driver=True, configure_logging=False)


def _worker_env(cfg: TrainConfig, tracking_uri: str) -> dict[str, str]:
    """``runtime_env`` variables of the Train workers: non-secret settings only. The workers log to the
    MLflow store the run was created in (``tracking_uri``), unless that URI carries credentials: then it
    is left out and each worker uses its node's own ``MLFLOW_TRACKING_URI`` (a runtime_env variable
    replaces the node's value, and a URL stripped of its password would replace a working one)."""
    from ..ray_env import RAY_TRAIN_LOG_LEVEL_ENV, RAY_TRAIN_QUIET_ENV
    from ..storage import public_env
    from .worker import FIND_UNUSED_ENV, PID_DIR_ENV

    tracking = public_env({"MLFLOW_TRACKING_URI": tracking_uri}, ("MLFLOW_TRACKING_URI",), keep_stripped_urls=False)
    env = {**tracking, "MLFLOW_DISABLE_TELEMETRY": "true",
           "OMP_NUM_THREADS": str(max(int(cfg.scaling.cpus_per_worker), 1)), **RAY_TRAIN_QUIET_ENV}
    for key in (PID_DIR_ENV, FIND_UNUSED_ENV, RAY_TRAIN_LOG_LEVEL_ENV):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def _tune_report_callback(extra: Mapping[str, float] | None):
    """Ray Train → Tune forwarding of every report, with ``extra`` values merged in (e.g. a NAS
    trial's architecture cost, which multi-objective Optuna needs in the trial's final result)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class _Report(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):  # noqa: ANN001, ANN201
            return super().after_report(run_context, [{**m, **dict(extra or {})} for m in metrics], checkpoint)

    return _Report()


def _build_trainer(cfg: TrainConfig, name: str, loop_config: dict, tracking_uri: str, tune_report: bool,
                   report_extra: Mapping[str, float] | None = None):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from .worker import train_worker

    s = cfg.scaling
    use_gpu = s.gpus_per_worker > 0
    resources = {"CPU": float(s.cpus_per_worker), **({"GPU": float(s.gpus_per_worker)} if use_gpu else {})}
    callbacks = []
    if tune_report:
        callbacks.append(_tune_report_callback(report_extra))
    from ..ray_env import ray_train_log_level
    from ..storage import ray_storage_from_env

    # s3:// carries its endpoint; each node reads the credentials from its own environment
    storage_path, storage_fs = ray_storage_from_env(cfg.storage)
    run_config = ray.train.RunConfig(
        name=name, storage_path=storage_path, storage_filesystem=storage_fs, callbacks=callbacks or None,
        failure_config=ray.train.FailureConfig(max_failures=cfg.checkpoint.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep_last),
        worker_runtime_env={"env_vars": _worker_env(cfg, tracking_uri)},
        logging_config=ray.train.LoggingConfig(log_level=ray_train_log_level()),
    )
    return TorchTrainer(
        train_worker, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=s.workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"), run_config=run_config,
    )


# --------------------------------------------------------------------------- entry point
def _checkpoint_uri(cfg: TrainConfig, checkpoint: Any) -> str:
    path = str(checkpoint.path)
    if _is_uri(cfg.storage):
        return f"{cfg.storage.split('://')[0]}://{path.lstrip('/')}"
    return path


def _best_val(meta: dict) -> dict[str, float]:
    metrics = (meta.get("best") or {}).get("metrics") or meta.get("metrics") or {}
    return {k: float(v) for k, v in metrics.items() if k.startswith("val/")}


def _log_recipe(cfg: TrainConfig) -> None:
    """The resolved recipe (stages, switch epoch, optimiser/schedule/EMA with overrides) as MLflow params."""
    from .. import tracking

    from ..engine.recipes import train_recipe

    recipe = train_recipe(cfg)
    tracking.active_run().log_params({f"resolved.{k}": str(v)[:500] for k, v in recipe.describe().items()})


def _describe_run(cfg: TrainConfig, run_id: str) -> None:
    """What a new run logs once: its config, context (seed, code, hardware), resolved recipe and
    dataset inputs. Each call is idempotent, so an attempt that died half-way repeats it whole."""
    from .. import tracking
    from .run_meta import log_train_inputs

    tracking.log_config(cfg)
    tracking.log_run_context(seed=cfg.train.seed, dataset=(cfg.data.train.annotations, cfg.data.train.images))
    _log_recipe(cfg)
    log_train_inputs(tracking.Run(run_id), cfg)


def run_training(cfg: TrainConfig, *, config_dir: str | os.PathLike | None = None, resume: bool = False,
                 parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None, progress: bool = True,
                 tune_report: bool = False, report_extra: Mapping[str, float] | None = None) -> TrainResult:
    """Train ``cfg`` on Ray Train and track it in MLflow (see the module docstring).

    Args:
        config_dir: directory relative paths in ``cfg`` are resolved against (the config file's).
        resume: continue the latest run of ``cfg.name`` in ``cfg.storage`` from its last checkpoint
            (with the config stored by that run); a fresh run when there is none (sweep trials and
            workflow steps always pass ``resume=True``; the CLI refuses ``--resume`` without a run).
        parent_run_id: nest the MLflow run under this one (sweeps, workflows).
        tags: extra MLflow tags. progress: per-epoch progress output from rank 0.
        tune_report: forward every epoch's metrics to the enclosing Ray Tune trial.
        report_extra: values added to every report forwarded to Tune (a NAS trial's cost).

    Raises:
        ConfigError / DataError (bad config or dataset), RuntimeFailure (training failed).
    """
    from .. import tracking
    from ..engine import checkpoint as ckpt_io
    from .plots import log_training_artifacts

    start = time.perf_counter()
    cfg = resolve_train_config(cfg, config_dir)
    previous = _latest_run(cfg.storage, cfg.name) if resume else None
    resume = previous is not None
    if previous is not None:
        name, marker = previous
        run_id = marker["run_id"]
        cfg = TrainConfig.model_validate(marker["config"])  # the run continues with its own config
    else:
        check_datasets(cfg)
        check_distill(cfg)
        from .repopt import check_repopt_scales

        check_repopt_scales(cfg)  # not a hyper-search checkpoint of this model: one line, exit 2, before Ray starts
        from .finetune import check_pretrained

        check_pretrained(cfg)  # a checkpoint of another model: one line, exit 2, before Ray starts
        name, run_id = _new_run_name(cfg.storage, cfg.name), None
    uri = tracking.configure()
    from .run_meta import log_best_model, train_tags

    all_tags = {**train_tags(cfg, tags), "detflow.kind": "train", "detflow.model": cfg.model.name,
                "detflow.run_dir": _join(cfg.storage, name), **dict(tags or {})}
    with tracking.start_run(name, experiment=cfg.experiment, tags=all_tags, parent_run_id=parent_run_id,
                            run_id=run_id) as run:
        if not resume:
            run_id = run.info.run_id
            marker = {"run_id": run_id, "name": name, "created": time.time(), "config": cfg.model_dump(mode="json"),
                      "described": False}
            _write_marker(cfg.storage, name, marker)  # first: a retried attempt continues this run
        if not marker.get("described", True):
            _describe_run(cfg, run_id)
            _write_marker(cfg.storage, name, {**marker, "described": True})
        best_dir = None if _is_uri(cfg.storage) else _join(cfg.storage, name, "best")
        spool = tracking.spool_file(None if _is_uri(cfg.storage) else _join(cfg.storage, name), run_id)
        loop_config = {"cfg": cfg, "run_id": run_id, "best_dir": best_dir, "progress": progress,
                       "spool": str(spool)}
        _ensure_ray()
        trainer = _build_trainer(cfg, name, loop_config, uri, tune_report, report_extra)
        from ..ray_env import worker_group_janitor

        try:
            with worker_group_janitor():
                result = trainer.fit()
        except Exception as exc:
            raise RuntimeFailure(f"training run {name} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                                 f"; continue it with `detflow train CONFIG --resume`") from exc
        if result.checkpoint is None:
            raise RuntimeFailure(f"training run {name} reported no checkpoint")
        last = _checkpoint_uri(cfg, result.checkpoint)
        best = best_dir if best_dir and ckpt_io.is_checkpoint(best_dir) else last
        meta = ckpt_io.read_meta(last)
        metrics = _best_val(meta)
        tracking.EpochMetrics(tracking.Run(run_id), tracking.MetricSpool(spool)).flush()  # what the workers left
        model_id = log_best_model(tracking.Run(run_id), cfg, best)
        log_training_artifacts(cfg, meta, best=best, last=last, model_id=model_id)
        early = meta.get("early_stop")
        if early and early.get("stopped_epoch") is not None:
            from ..engine.loop import emit

            emit(early_stop_line(early, best))
    return TrainResult(run_id=run_id, checkpoint=best, last_checkpoint=last, metrics=metrics,
                       history=list(meta.get("history", [])), storage_path=_join(cfg.storage, name),
                       wall_time_s=time.perf_counter() - start, early_stop=early)


def early_stop_line(early: Mapping[str, Any], best: str) -> str:
    """``early stop at epoch 7: val/bbox_mAP did not improve for 3 epochs (best 0.412 at epoch 4);
    best checkpoint kept: …`` (epochs counted from 1, as the progress lines do)."""
    stopped, best_epoch = int(early["stopped_epoch"]), int(early["best_epoch"])
    key = early.get("metric", "val metric")
    return (f"early stop at epoch {stopped + 1}: {key} did not improve for {stopped - best_epoch} epochs "
            f"(best {float(early['best']):.4g} at epoch {best_epoch + 1}); best checkpoint kept: {best}")

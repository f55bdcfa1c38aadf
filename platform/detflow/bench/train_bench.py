"""``detflow bench train``: training throughput through detflow (Ray Train + MLflow + checkpoints)
against the same model, data and batch in a bare torch loop, and DDP scaling over worker counts.

* bare torch: :class:`detflow.engine.TrainLoop` in this process, no Ray, no MLflow, no checkpoints;
  one torch thread (as one Ray worker with one CPU).
* detflow: ``run_training`` with N workers; an epoch's cost is the time between consecutive epoch
  records in MLflow, so it includes the report, checkpoint write and logging.

Overhead (1 worker) = detflow epoch time / bare epoch time − 1, averaged over the epochs after the
first (warm-up); the bare loop runs before and after the Ray runs and the faster is the reference
(on a shared machine, load changes between runs). Scaling efficiency = images/s(N) / (N · images/s(1)).
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["TrainBenchRow", "TrainBenchResult", "run_train_bench", "bare_epoch_times"]


@dataclasses.dataclass
class TrainBenchRow:
    mode: str            # "bare torch" | "detflow"
    workers: int
    images_per_s: float
    epoch_s: float
    overhead_pct: float | None = None
    scaling_efficiency: float | None = None


@dataclasses.dataclass
class TrainBenchResult:
    model: str
    image_size: int
    batch_size: int
    steps_per_epoch: int
    rows: list[TrainBenchRow]

    def to_markdown(self) -> str:
        head = "| mode | workers | images/s | s/epoch | overhead vs bare | scaling eff. |\n|---|---|---|---|---|---|"
        lines = [head]
        for r in self.rows:
            ov = "" if r.overhead_pct is None else f"{r.overhead_pct:+.1f} %"
            eff = "" if r.scaling_efficiency is None else f"{100 * r.scaling_efficiency:.0f} %"
            lines.append(f"| {r.mode} | {r.workers} | {r.images_per_s:.2f} | {r.epoch_s:.2f} | {ov} | {eff} |")
        title = (f"train benchmark: {self.model} at {self.image_size} px, batch {self.batch_size}/worker, "
                 f"{self.steps_per_epoch} steps/epoch")
        return title + "\n\n" + "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _mean_after_first(values: Sequence[float]) -> float:
    tail = list(values[1:]) or list(values)
    return sum(tail) / max(len(tail), 1)


def bare_epoch_times(cfg: Any, epochs: int) -> tuple[list[float], int]:
    """Epoch wall times of the bare single-process loop on ``cfg`` (resolved TrainConfig)."""
    import torch

    from ..train.data import build_train_data
    from ..train.worker import _build_loop, build_model

    torch.set_num_threads(max(int(cfg.scaling.cpus_per_worker), 1))
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, int(cfg.model.num_classes))
    data = build_train_data(cfg, model.input_spec)
    loop = _build_loop(cfg, model, data.recipe, data.steps_per_epoch, 1, torch.device("cpu"), None, progress=False)
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        loop.train_epoch(data.train_loader(epoch), epoch)
        times.append(time.perf_counter() - start)
    return times, data.steps_per_epoch


def _detflow_epoch_times(cfg: Any) -> list[float]:
    from .. import tracking
    from ..train import run_training

    result = run_training(cfg, progress=False)
    stamps = [ts / 1000.0 for _, _, ts in tracking.Run(result.run_id).metric_history("epoch")]
    first = result.history[0].get("train/epoch_time_s", 0.0)
    return [first] + [b - a for a, b in zip(stamps, stamps[1:])]


def _bench_config(model: str, image_size: int, batch_size: int, steps: int, epochs: int, data: Any, storage: str):
    from ..config import TrainConfig, parse_config
    from ..train.runner import resolve_train_config

    raw = {"name": f"bench-{model}", "model": {"name": model},
           "data": {"train": {"annotations": str(data.train_json), "images": str(data.images_dir)},
                    "image_size": image_size},
           "recipe": {"name": "rtmdet"},
           "train": {"epochs": epochs, "batch_size": batch_size, "max_steps_per_epoch": steps,
                     "schedule": {"warmup_iters": 1}},
           "scaling": {"workers": 1, "cpus_per_worker": 1},
           "checkpoint": {"every": 1, "keep_last": 1, "max_failures": 0}, "storage": storage,
           "experiment": "detflow-bench"}
    return resolve_train_config(parse_config(TrainConfig, raw, "bench train"))


def run_train_bench(model: str = "rtmdet_tiny", workers: Sequence[int] = (1, 2), *, image_size: int = 128,
                    images: int = 64, batch_size: int = 4, steps: int = 8, epochs: int = 3, data: Any = None,
                    print_fn: Callable[[str], None] | None = print) -> TrainBenchResult:
    """Measure bare-loop and detflow training throughput (see the module docstring).

    Args:
        workers: Ray Train worker counts to run (each worker: 1 CPU, gloo).
        images / image_size: size of the synthetic dataset written when ``data`` is None.
        steps: steps per epoch per worker (``max_steps_per_epoch``); epochs: epochs per run (≥ 2).
        data: a ``SynthPaths``-like object with ``train_json`` and ``images_dir``.
    """
    from ..data import generate_synthetic

    say = print_fn or (lambda s: None)
    with tempfile.TemporaryDirectory(prefix="detflow-bench-train-") as tmp:
        if data is None:
            data = generate_synthetic(Path(tmp) / "data", num_images=images, image_size=image_size, seed=0, val_fraction=0.0)
        cfg = _bench_config(model, image_size, batch_size, steps, max(epochs, 2), data, str(Path(tmp) / "runs"))
        say("bare torch loop …")
        bare, steps_per_epoch = bare_epoch_times(cfg, cfg.train.epochs)
        per_epoch_images = steps_per_epoch * batch_size
        runs = []
        for n in workers:
            say(f"detflow, {n} worker(s) …")
            run_cfg = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"workers": n})})
            runs.append((n, _mean_after_first(_detflow_epoch_times(run_cfg))))
        say("bare torch loop again (the faster of the two bare runs is the reference) …")
        bare_epoch = min(_mean_after_first(bare), _mean_after_first(bare_epoch_times(cfg, cfg.train.epochs)[0]))
        rows = [TrainBenchRow("bare torch", 1, per_epoch_images / bare_epoch, bare_epoch)]
        base_ips = None
        for n, epoch_s in runs:
            ips = n * per_epoch_images / epoch_s
            base_ips = base_ips if base_ips is not None else (ips if n == 1 else None)
            rows.append(TrainBenchRow("detflow", n, ips, epoch_s,
                                      overhead_pct=100.0 * (epoch_s / bare_epoch - 1.0) if n == 1 else None,
                                      scaling_efficiency=ips / (n * base_ips) if base_ips else None))
    return TrainBenchResult(model, image_size, batch_size, steps_per_epoch, rows)

"""``detflow bench train``: training throughput through detflow (Ray Train + MLflow + checkpoints)
against the same model, data and batch in a bare torch loop, and DDP scaling over worker counts.

* bare torch: :class:`detflow.engine.TrainLoop` in this process, no Ray, no MLflow, no checkpoints;
  one torch thread (as one Ray worker with one CPU).
* bare torch DDP: the same loop in N spawned processes joined by a gloo process group, still without
  Ray or MLflow: the scaling this machine allows, the ceiling detflow's own scaling is read against.
* N independent processes: the same N processes and data shards, started together, but the model is
  not wrapped in DDP (no gradient all-reduce): what N concurrent copies of the loop get out of this
  machine's cores, memory bandwidth and caches at all — the compute ceiling of any N-worker scaling.
* detflow: ``run_training`` with N workers; an epoch's cost is the time between consecutive epoch
  records in MLflow, so it includes the report, checkpoint write and logging.

Overhead (1 worker) = detflow epoch time / bare epoch time − 1, averaged over the epochs after the
first (warm-up); the bare loop runs before and after the Ray runs and the faster is the reference
(on a shared machine, load changes between runs). Scaling efficiency = images/s(N) / (N · images/s(1)),
computed per repetition (``repeats``) from runs made back to back, and reported as mean and range.
"""
from __future__ import annotations

import dataclasses
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

INDEPENDENT = "independent processes (no DDP)"

__all__ = ["INDEPENDENT", "TrainBenchRow", "TrainBenchResult", "run_train_bench", "bare_epoch_times", "bare_ddp_epoch_times", "spawn_loops"]


@dataclasses.dataclass
class TrainBenchRow:
    mode: str            # "bare torch" | INDEPENDENT | "bare torch DDP" | "detflow"
    workers: int
    images_per_s: float
    epoch_s: float
    overhead_pct: float | None = None
    scaling_efficiency: float | None = None
    efficiency_range: tuple[float, float] | None = None  # min, max over the repetitions

    def efficiency_cell(self) -> str:
        if self.scaling_efficiency is None:
            return ""
        cell = f"{100 * self.scaling_efficiency:.0f} %"
        if self.efficiency_range and self.efficiency_range[0] != self.efficiency_range[1]:
            lo, hi = self.efficiency_range
            cell += f" ({100 * lo:.0f}–{100 * hi:.0f})"
        return cell


@dataclasses.dataclass
class TrainBenchResult:
    model: str
    image_size: int
    batch_size: int
    steps_per_epoch: int
    rows: list[TrainBenchRow]
    repeats: int = 1

    def to_markdown(self) -> str:
        head = ("| mode | workers | images/s | s/epoch | overhead vs bare | scaling eff. (range) | speed-up |\n"
                "|---|---|---|---|---|---|---|")
        lines = [head]
        for r in self.rows:
            ov = "" if r.overhead_pct is None else f"{r.overhead_pct:+.1f} %"
            speedup = "" if r.scaling_efficiency is None else f"{r.workers * r.scaling_efficiency:.2f}×"
            lines.append(f"| {r.mode} | {r.workers} | {r.images_per_s:.2f} | {r.epoch_s:.2f} | {ov} | "
                         f"{r.efficiency_cell()} | {speedup} |")
        title = (f"train benchmark: {self.model} at {self.image_size} px, batch {self.batch_size}/worker, "
                 f"{self.steps_per_epoch} steps/epoch, {self.repeats} repetition(s)")
        return title + "\n\n" + "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _mean_after_first(values: Sequence[float]) -> float:
    tail = list(values[1:]) or list(values)
    return sum(tail) / max(len(tail), 1)


def _loop_and_data(cfg: Any, rank: int = 0, world: int = 1) -> tuple[Any, Any]:
    """The worker's own model, data and :class:`TrainLoop` for ``rank`` of ``world``, outside Ray."""
    import torch

    from ..train.data import build_train_data
    from ..train.worker import _build_loop, build_model

    torch.set_num_threads(max(int(cfg.scaling.cpus_per_worker), 1))
    torch.manual_seed(cfg.train.seed + rank)
    model = build_model(cfg, int(cfg.model.num_classes))
    data = build_train_data(cfg, model.input_spec, rank=rank, world=world)
    loop = _build_loop(cfg, model, data.recipe, data.steps_per_epoch, world, torch.device("cpu"), None, progress=False)
    return loop, data


def _timed_epochs(loop: Any, data: Any, epochs: int) -> list[float]:
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        loop.train_epoch(data.train_loader(epoch), epoch)
        times.append(time.perf_counter() - start)
    return times


def bare_epoch_times(cfg: Any, epochs: int) -> tuple[list[float], int]:
    """Epoch wall times of the bare single-process loop on ``cfg`` (resolved TrainConfig)."""
    loop, data = _loop_and_data(cfg)
    return _timed_epochs(loop, data, epochs), data.steps_per_epoch


def _ddp_worker(rank: int, world: int, cfg: Any, epochs: int, port: int, queue: Any, sync: bool = True) -> None:
    """One process of :func:`bare_ddp_epoch_times` (module level: it is pickled by ``spawn``).
    ``sync=False``: the model is not wrapped in DDP (independent processes; they only start together)."""
    import os

    import torch
    import torch.distributed as dist

    from ..train.worker import ddp_kwargs

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loop, data = _loop_and_data(cfg, rank, world)
        if sync:
            loop.model = torch.nn.parallel.DistributedDataParallel(loop.model, **ddp_kwargs(cfg, loop.model))
        dist.barrier()
        times = _timed_epochs(loop, data, epochs)
        weights = float(sum(p.detach().double().sum() for p in loop.model.parameters()))
        queue.put((rank, (times, weights)))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_loops(cfg: Any, epochs: int, world: int, *, sync: bool = True) -> dict[int, tuple[list[float], float]]:
    """Run the bare loop in ``world`` spawned gloo processes (no Ray), DDP-wrapped when ``sync``;
    ``{rank: (epoch wall times, sum of the trained weights)}``."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, world, cfg, epochs, port, queue, sync)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=3600) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"bare DDP benchmark: a worker exited with {[p.exitcode for p in procs]}")
    return results


def bare_ddp_epoch_times(cfg: Any, epochs: int, world: int, *, sync: bool = True) -> list[float]:
    """Rank 0's epoch wall times of the bare loop in ``world`` spawned gloo processes (no Ray);
    ``sync=False``: the same processes without DDP (no gradient exchange)."""
    return spawn_loops(cfg, epochs, world, sync=sync)[0][0]


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


def _with_workers(cfg: Any, n: int) -> Any:
    return cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"workers": n})})


def _scaling_rows(mode: str, per_repeat: list[dict[int, float]], per_epoch_images: int,
                  base_epoch: float | None = None) -> list[TrainBenchRow]:
    """One row per worker count of ``per_repeat`` (one ``{workers: epoch seconds}`` per repetition).

    Efficiency = images/s(N) / (N · images/s(1)) = epoch(1) / epoch(N) (steps per worker are fixed),
    against ``base_epoch`` if given, else against the same repetition's own 1-worker run.
    """
    rows = []
    for n in per_repeat[0]:
        epochs = [rep[n] for rep in per_repeat]
        bases = [base_epoch or rep.get(1) for rep in per_repeat]
        effs = [b / e for b, e in zip(bases, epochs)] if all(bases) else []
        epoch_s = statistics.mean(epochs)
        rows.append(TrainBenchRow(mode, n, n * per_epoch_images / epoch_s, epoch_s,
                                  scaling_efficiency=statistics.mean(effs) if effs else None,
                                  efficiency_range=(min(effs), max(effs)) if effs else None))
    return rows


def run_train_bench(model: str = "rtmdet_tiny", workers: Sequence[int] = (1, 2), *, image_size: int = 128,
                    images: int = 64, batch_size: int = 4, steps: int = 8, epochs: int = 3, repeats: int = 1,
                    data: Any = None, print_fn: Callable[[str], None] | None = print) -> TrainBenchResult:
    """Measure bare-loop, bare-DDP and detflow training throughput (see the module docstring).

    Args:
        workers: Ray Train worker counts to run (each worker: 1 CPU, gloo).
        images / image_size: size of the synthetic dataset written when ``data`` is None.
        steps: steps per epoch per worker (``max_steps_per_epoch``); epochs: epochs per run (≥ 2).
        repeats: repetitions of the whole set of DDP runs (bare and detflow, every worker count);
            the efficiencies are computed per repetition and reported as mean and range.
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
        ddp, free, runs = [], [], []
        for rep in range(repeats):
            multi = [n for n in workers if n > 1]
            free.append({n: _mean_after_first(bare_ddp_epoch_times(cfg, cfg.train.epochs, n, sync=False))
                         for n in multi})
            ddp.append({n: _mean_after_first(bare_ddp_epoch_times(cfg, cfg.train.epochs, n)) for n in multi})
            say(f"repetition {rep + 1}/{repeats}: independent + bare DDP {multi}, detflow {list(workers)} worker(s) …")
            runs.append({n: _mean_after_first(_detflow_epoch_times(_with_workers(cfg, n))) for n in workers})
        say("bare torch loop again (the faster of the two bare runs is the reference) …")
        bare_epoch = min(_mean_after_first(bare), _mean_after_first(bare_epoch_times(cfg, cfg.train.epochs)[0]))
    per_epoch_images = steps_per_epoch * batch_size
    rows = [TrainBenchRow("bare torch", 1, per_epoch_images / bare_epoch, bare_epoch)]
    if ddp and ddp[0]:
        rows += _scaling_rows(INDEPENDENT, free, per_epoch_images, base_epoch=bare_epoch)
        rows += _scaling_rows("bare torch DDP", ddp, per_epoch_images, base_epoch=bare_epoch)
    for row in _scaling_rows("detflow", runs, per_epoch_images):
        if row.workers == 1:
            row.overhead_pct = 100.0 * (row.epoch_s / bare_epoch - 1.0)
        rows.append(row)
    return TrainBenchResult(model, image_size, batch_size, steps_per_epoch, rows, repeats)

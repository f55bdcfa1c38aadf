"""``detflow bench nas``: what running NAS trials concurrently buys, on this machine.

The SAME SpineNet search (SpineNet §3–4: Optuna TPE with the same seed proposing permutations,
cross-scale connections and block adjustments; accuracy and a cost, latency or GMACs, as two
objectives; the accuracy is ``val/bbox_mAP50``: at the bench's few proxy epochs AP@[.5:.95] is ≈ 0
for every architecture) runs on Ray Tune once per concurrency, by default with 1 and then 2
trials at a time, on synthetic data. Each trial is a real proxy training on Ray Train (one worker,
one CPU) at 0.25 feature scale. Early stopping is off by default (``scheduler="none"``) so that every
run trains the same trial-epochs and the wall times compare the concurrency alone (with ASHA the
stopping decisions depend on the order trials finish in).

Per run: wall time of the search, trials per hour, the most trials seen running at once (from the
trials' start/end times), the winner's metric and cost. With more trials at a time TPE proposes
from fewer finished trials, so the best AP of the runs differs as well as their time. The runs go
one after the other on the same local Ray, so on a shared machine a change of load shows.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

__all__ = ["NasBenchRow", "NasBenchResult", "run_nas_bench", "max_overlap"]


@dataclasses.dataclass
class NasBenchRow:
    concurrency: int
    trials: int
    completed: int
    failed: int
    max_running: int
    wall_time_s: float
    trials_per_hour: float
    best_metric: float | None
    best_cost: float | None
    parent_run_id: str


@dataclasses.dataclass
class NasBenchResult:
    metric: str
    cost: str
    scheduler: str
    trials: int
    epochs: int
    images: int
    image_size: int
    rows: list[NasBenchRow]

    def to_markdown(self) -> str:
        head = (f"| trials at a time | wall time (s) | trials / hour | most running at once | best {self.metric} "
                f"| its {self.cost} | completed / failed |\n|---|---|---|---|---|---|---|")
        lines = [head]
        for r in self.rows:
            best = "-" if r.best_metric is None else f"{r.best_metric:.4f}"
            cost = "-" if r.best_cost is None else f"{r.best_cost:.2f}"
            lines.append(f"| {r.concurrency} | {r.wall_time_s:.0f} | {r.trials_per_hour:.1f} | {r.max_running} "
                         f"| {best} | {cost} | {r.completed} / {r.failed} |")
        title = (f"NAS benchmark: SpineNet proxy search, TPE (seed 0) on {self.metric} and {self.cost}, "
                 f"{self.trials} trials × {self.epochs} epochs, scheduler {self.scheduler}, {self.images} "
                 f"synthetic train images at {self.image_size} px, 1 CPU per trial")
        return title + "\n\n" + "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals ``(start, end)`` open at one instant (an end at t closes before a start at t)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def _base_config(data: Any, image_size: int) -> dict[str, Any]:
    """SpineNet-49S with the short-budget recipe of workflows/configs/spinenet_49s_synth.yaml."""
    return {
        "kind": "train", "name": "bench-nas-base", "experiment": "detflow-bench", "model": {"name": "spinenet_49s"},
        "data": {"train": {"annotations": str(data.train_json), "images": str(data.images_dir)},
                 "val": {"annotations": str(data.val_json), "images": str(data.images_dir)},
                 "image_size": image_size},
        "recipe": {"name": "retinanet", "ratio_range": [0.75, 1.25]},
        "train": {"epochs": 1, "batch_size": 4,
                  "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.05, "scale_lr_by_batch": False},
                  "schedule": {"name": "cosine", "warmup_iters": 10, "warmup_epochs": 0, "min_lr_ratio": 0.05}},
        "scaling": {"workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every": 1, "keep_last": 1, "max_failures": 0},
    }


def _nas_config(name: str, *, concurrency: int, trials: int, epochs: int, image_size: int, cost: str,
                scheduler: str, metric: str, storage: Path):
    from ..archsearch import NasConfig
    from ..config.compose import parse_config

    data = {"kind": "nas", "name": name, "base": "base.yaml", "metric": metric, "cost": cost,
            "num_samples": trials, "max_concurrent_trials": concurrency, "max_retries": 1,
            "search": {"name": "tpe", "seed": 0},
            "scheduler": {"name": scheduler, "grace_period": 1, "reduction_factor": 2},
            "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
            "proxy": {"filter_size_scale": 0.25, "image_size": image_size, "epochs": epochs,
                      "holdout_fraction": 0.25},
            "storage": str(storage)}
    return parse_config(NasConfig, data, f"bench nas (concurrency {concurrency})")


def _row(concurrency: int, result: Any, cost_key: str, wall_time_s: float) -> NasBenchRow:
    """One table row from a :class:`~detflow.archsearch.NasResult` (rows: ``status``, ``metric``,
    ``cost/…``, ``started_at`` / ``ended_at`` in epoch seconds)."""
    ranked = list(result.ranked)
    times = [(float(r["started_at"]), float(r["ended_at"])) for r in ranked
             if r.get("started_at") is not None and r.get("ended_at") is not None]
    best = result.best or {}
    return NasBenchRow(
        concurrency=concurrency, trials=len(ranked),
        completed=sum(r.get("status") in ("TERMINATED", "STOPPED_EARLY") for r in ranked),
        failed=sum(r.get("status") == "ERROR" for r in ranked), max_running=max_overlap(times),
        wall_time_s=wall_time_s, trials_per_hour=len(ranked) * 3600.0 / wall_time_s if wall_time_s > 0 else 0.0,
        best_metric=best.get("metric"), best_cost=best.get(cost_key), parent_run_id=result.parent_run_id)


def run_nas_bench(*, trials: int = 12, concurrency: Sequence[int] = (1, 2), epochs: int = 2, images: int = 24,
                  image_size: int = 128, cost: str = "gmacs", scheduler: str = "none",
                  metric: str = "val/bbox_mAP50", print_fn: Callable[[str], None] | None = print) -> NasBenchResult:
    """Run the same search once per value of ``concurrency`` (see the module docstring).

    Args:
        trials: architectures sampled per search; epochs: proxy epochs per trial.
        images: synthetic training images (the proxy holds a quarter of them out for its AP).
        image_size: side of the images and the proxy's input size (a multiple of 128: SpineNet's L7).
        cost: the second objective (``latency_ms`` or ``gmacs`` / ``params_M``).
    """
    from ..archsearch import run_nas
    from ..archsearch.cost import metric_name
    from ..atomic import atomic_write
    from ..data import generate_synthetic

    say = print_fn or (lambda s: None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="detflow-bench-nas-") as tmp:
        root = Path(tmp)
        data = generate_synthetic(root / "data", num_images=images + 2, image_size=image_size, seed=0,
                                  val_fraction=2 / (images + 2))
        atomic_write(root / "base.yaml", yaml.safe_dump(_base_config(data, image_size), sort_keys=False))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in concurrency:
            say(f"NAS with {n} trial(s) at a time: {trials} trials × {epochs} epochs …")
            cfg = _nas_config(f"bench-nas-c{n}-{stamp}", concurrency=n, trials=trials, epochs=epochs,
                              image_size=image_size, cost=cost, scheduler=scheduler, metric=metric,
                              storage=root / "nas")
            start = time.perf_counter()
            result = run_nas(cfg, config_dir=root, verbose=0)
            rows.append(_row(n, result, metric_name(cost), time.perf_counter() - start))
    return NasBenchResult(metric, cost, scheduler, trials, epochs, images, image_size, rows)

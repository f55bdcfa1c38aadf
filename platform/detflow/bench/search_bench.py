"""``detflow bench search``: what ASHA early stopping buys a TPE sweep, at the same budget.

The SAME sweep runs twice on synthetic data: RTMDet's soft-centre prior α and β
(``model.assigner.soft_center_alpha/beta``), the CachedMosaic cache length
(``recipe.mosaic.max_cached_images``) and the neck's CSP expansion ratio (``model.neck.expand_ratio``)
for ``rtmdet_tiny``, searched by Optuna TPE (same seed) for the same number of trials and epochs per
trial — once with ASHA (grace period 1 epoch, reduction factor 2), once with no early stopping.

Per run: best metric reached, trial-epochs spent (the sum over trials of the epochs each trained;
``trials × epochs`` without early stopping), wall time of the sweep, and the median Ray Tune
per-trial overhead (trial start → first report, minus the first epoch's training time; see
:mod:`detflow.tune.stats`). The two sweeps run one after the other on the same local Ray, so on a
shared machine a change of load between them shows in the wall times.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

__all__ = ["SearchBenchRow", "SearchBenchResult", "run_search_bench", "search_bench_space"]


@dataclasses.dataclass
class SearchBenchRow:
    scheduler: str                  # "asha" | "none"
    trials: int
    best_metric: float | None
    trial_epochs: int
    stopped_early: int
    failed: int
    wall_time_s: float
    median_overhead_s: float | None
    parent_run_id: str


@dataclasses.dataclass
class SearchBenchResult:
    model: str
    metric: str
    mode: str
    trials: int
    epochs: int
    images: int
    image_size: int
    max_concurrent: int
    rows: list[SearchBenchRow]

    def to_markdown(self) -> str:
        head = (f"| search | best {self.metric} | trial-epochs | stopped early | failed | wall time (s) "
                "| median Tune overhead/trial (s) |\n|---|---|---|---|---|---|---|")
        lines = [head]
        for r in self.rows:
            best = "-" if r.best_metric is None else f"{r.best_metric:.4f}"
            over = "-" if r.median_overhead_s is None else f"{r.median_overhead_s:.1f}"
            name = "TPE + ASHA" if r.scheduler == "asha" else "TPE, no early stopping"
            lines.append(f"| {name} | {best} | {r.trial_epochs} / {self.trials * self.epochs} | {r.stopped_early} "
                         f"| {r.failed} | {r.wall_time_s:.0f} | {over} |")
        title = (f"search benchmark: {self.model}, {self.trials} trials × {self.epochs} epochs, {self.images} "
                 f"synthetic train images at {self.image_size} px, {self.max_concurrent} trials at a time")
        return title + "\n\n" + "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def search_bench_space() -> dict[str, dict[str, Any]]:
    """The searched knobs (RTMDet §3.2 soft-centre prior, §3.3 CachedMosaic, CSPNeXtPAFPN width)."""
    return {
        "model.assigner.soft_center_alpha": {"uniform": [5.0, 20.0]},
        "model.assigner.soft_center_beta": {"uniform": [1.0, 5.0]},
        "recipe.mosaic.max_cached_images": {"int": [10, 40]},
        "model.neck.expand_ratio": {"choice": [0.25, 0.5, 0.75]},
    }


def _base_config(model: str, data: Any, image_size: int, epochs: int, batch_size: int) -> dict[str, Any]:
    return {
        "name": "bench-search", "experiment": "detflow-bench", "model": {"name": model},
        "data": {"train": {"annotations": str(data.train_json), "images": str(data.images_dir)},
                 "val": {"annotations": str(data.val_json), "images": str(data.images_dir)},
                 "image_size": image_size},
        # the short-budget recipe of workflows/configs/rtmdet_tiny_synth.yaml, so that trials learn in a few epochs
        "recipe": {"name": "rtmdet", "ratio_range": [0.5, 1.5], "mosaic": {"max_cached_images": 20},
                   "mixup": {"max_cached_images": 10}},
        "train": {"epochs": epochs, "batch_size": batch_size, "eval_interval": 1,
                  "optimizer": {"lr": 0.003, "scale_lr_by_batch": False},
                  "schedule": {"warmup_iters": 20, "warmup_epochs": 0}},
        "scaling": {"workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"every": 1, "keep_last": 1, "max_failures": 0},
    }


def _sweep_config(name: str, scheduler: str, *, trials: int, max_concurrent: int, metric: str, mode: str,
                  storage: Path):
    from ..config.compose import parse_config
    from ..tune import SweepConfig

    data = {"name": name, "base": "base.yaml", "metric": metric, "mode": mode, "space": search_bench_space(),
            "search": {"name": "tpe", "seed": 0},
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2} if scheduler == "asha"
            else {"name": "none"},
            "num_samples": trials, "max_concurrent": max_concurrent,
            "resources": {"workers": 1, "cpus_per_worker": 1}, "storage": str(storage)}
    return parse_config(SweepConfig, data, f"bench search ({scheduler})")


def _row(scheduler: str, result: Any, wall_time_s: float) -> SearchBenchRow:
    trials = result.trials
    return SearchBenchRow(
        scheduler=scheduler, trials=len(trials), best_metric=result.best_metric,
        trial_epochs=sum(int(t["epochs"]) for t in trials),
        stopped_early=sum(t["status"] == "STOPPED_EARLY" for t in trials),
        failed=sum(t["status"] == "ERROR" for t in trials), wall_time_s=wall_time_s,
        median_overhead_s=result.median_trial_overhead_s, parent_run_id=result.parent_run_id)


def run_search_bench(*, trials: int = 16, epochs: int = 6, images: int = 96, image_size: int = 160,
                     max_concurrent: int = 2, batch_size: int = 4, model: str = "rtmdet_tiny",
                     metric: str = "val/bbox_mAP50", mode: str = "max",
                     print_fn: Callable[[str], None] | None = print) -> SearchBenchResult:
    """Run the sweep with ASHA, then without early stopping (see the module docstring).

    Args:
        trials: trials per sweep; epochs: epochs per trial (ASHA's max). images: synthetic training
            images (a quarter as many more, at least 2, are written for val). image_size: their side.
        max_concurrent: trials at a time (each trial: one Ray Train worker with one CPU).
    """
    from ..data import generate_synthetic
    from ..tune import run_sweep

    say = print_fn or (lambda s: None)
    n_val = max(2, images // 4)
    rows = []
    with tempfile.TemporaryDirectory(prefix="detflow-bench-search-") as tmp:
        root = Path(tmp)
        data = generate_synthetic(root / "data", num_images=images + n_val, image_size=image_size, seed=0,
                                  val_fraction=n_val / (images + n_val))
        from ..atomic import atomic_write

        atomic_write(root / "base.yaml", yaml.safe_dump(_base_config(model, data, image_size, epochs, batch_size)))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for scheduler in ("asha", "none"):
            say(f"sweep with scheduler={scheduler}: {trials} trials × {epochs} epochs …")
            cfg = _sweep_config(f"bench-search-{scheduler}-{stamp}", scheduler, trials=trials,
                                max_concurrent=max_concurrent, metric=metric, mode=mode, storage=root / "sweeps")
            start = time.perf_counter()
            result = run_sweep(cfg, config_dir=root, verbose=1 if print_fn else 0)
            rows.append(_row(scheduler, result, time.perf_counter() - start))
    return SearchBenchResult(model, metric, mode, trials, epochs, images, image_size, max_concurrent, rows)

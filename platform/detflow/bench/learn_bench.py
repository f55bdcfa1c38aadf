"""``detflow bench learn``: val mAP50 against wall time for a short, time-budgeted training run.

Protocol (the 20-minute learning runs of docs/benchmarks.md):

* data: the synthetic shapes set, ``images`` train + a quarter as many val images (400 → 400 / 100, the
  same bytes as ``detflow data synth --images 500 --image-size 320``), written once under
  ``$DETFLOW_HOME/bench/learn-data`` and reused;
* recipe: the model family's short-budget config ``workflows/configs/<model>_synth.yaml`` (the one whose
  model is NAME, else one of the same family and task), or ``--config``; without either, the model's own
  recipe at its defaults. The bench replaces its data, epochs, eval interval, workers and storage;
* budget: the run's epoch count is planned, before it starts, from a probe of the training step and of
  evaluation in this process (a few steps after warm-up, one torch thread per worker as in the run):
  ``epochs = round((budget − start-up) / (epoch time + eval time / eval interval))``, so the LR schedule
  and the recipe's last plain-augmentation epochs fit the budget; the run stops after its last planned
  epoch, which the plan puts at the budget (the table shows where it really ended);
* measurement: ``detflow train`` (Ray Train + MLflow, experiment ``detflow-bench``); each epoch's elapsed
  time is the MLflow timestamp of its record (written after its evaluation and checkpoint) minus the
  moment ``run_training`` was called; val mAP50 with pycocotools, as training reports it (EMA weights
  where the recipe has EMA).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["LearnPoint", "LearnResult", "ProbeResult", "run_learn_bench", "plan_epochs", "family_config",
           "learn_data", "default_data_dir", "check_model_name", "STARTUP_S", "EPOCH_OVERHEAD_S"]

STARTUP_S = 20.0         # run_training → first step: worker group, datasets, MLflow run (Ray already up)
EPOCH_OVERHEAD_S = 1.0   # per epoch: checkpoint write, ray.train.report, MLflow (docs: ~0.5 s)
COCO_EVAL_S = 1.0        # pycocotools accumulate/summarize per evaluation
PROBE_EPOCHS = 100       # the probe's schedule length (with few epochs the recipe would start in its last stage)


@dataclasses.dataclass
class LearnPoint:
    """One epoch of the run. ``elapsed_s``: from the start of ``run_training`` to the epoch's record."""

    epoch: int                      # counted from 1
    elapsed_s: float | None
    train_loss: float | None
    bbox_mAP50: float | None        # None: not evaluated at this epoch
    segm_mAP50: float | None = None


@dataclasses.dataclass
class ProbeResult:
    """Per-worker step time, steps per epoch per worker and one evaluation's time, measured in-process."""

    step_s: float
    steps_per_epoch: int
    eval_s: float


@dataclasses.dataclass
class LearnResult:
    model: str
    task: str
    config: str                     # the base config file, or "recipe defaults"
    budget_s: float
    images: int
    val_images: int
    image_size: int
    workers: int
    epochs: int
    eval_interval: int
    probe: ProbeResult | None
    points: list[LearnPoint]
    wall_time_s: float
    ray_start_s: float
    run_id: str
    out_dir: str

    @property
    def evaluated(self) -> list[LearnPoint]:
        return [p for p in self.points if p.bbox_mAP50 is not None]

    def final(self) -> LearnPoint | None:
        """The last evaluated epoch (the run's last epoch is always evaluated)."""
        return self.evaluated[-1] if self.evaluated else None

    def at(self, seconds: float) -> LearnPoint | None:
        """The last evaluated epoch whose record came within ``seconds`` of the start."""
        inside = [p for p in self.evaluated if p.elapsed_s is not None and p.elapsed_s <= seconds]
        return inside[-1] if inside else None

    def at_budget(self) -> LearnPoint | None:
        return self.at(self.budget_s)

    def quarters(self) -> list[tuple[float, float | None]]:
        """``(seconds, bbox mAP50 known by then)`` at ¼, ½, ¾ and all of the budget."""
        marks = [self.budget_s * q for q in (0.25, 0.5, 0.75, 1.0)]
        return [(m, p.bbox_mAP50 if (p := self.at(m)) else None) for m in marks]

    def to_markdown(self) -> str:
        segm = self.task == "segm"
        head = "| elapsed | epoch | train loss | val bbox mAP50 |" + (" val segm mAP50 |" if segm else "")
        lines = [head, "|---|---|---|---|" + ("---|" if segm else "")]
        for p in self.points:
            row = f"| {_clock(p.elapsed_s)} | {p.epoch} | {_num(p.train_loss)} | {_num(p.bbox_mAP50)} |"
            lines.append(row + (f" {_num(p.segm_mAP50)} |" if segm else ""))
        title = (f"learning benchmark: {self.model} ({self.config}), {self.images} train / {self.val_images} val "
                 f"synthetic images, input {self.image_size} px, {self.workers} worker(s), budget "
                 f"{_clock(self.budget_s)}, {self.epochs} epochs planned, evaluation every {self.eval_interval}")
        return "\n".join([title, "", *lines, "", self.summary()])

    def summary(self) -> str:
        final, inside = self.final(), self.at_budget()
        if final is None:
            return "final: no evaluation"
        text = f"final: bbox mAP50 {_num(final.bbox_mAP50)}"
        if self.task == "segm":
            text += f", segm mAP50 {_num(final.segm_mAP50)}"
        text += f" at {_clock(final.elapsed_s)} (epoch {final.epoch})"
        if inside is not final:
            text += (f"; within the budget: bbox mAP50 {_num(inside.bbox_mAP50)} at {_clock(inside.elapsed_s)}"
                     if inside else "; no evaluation within the budget")
        marks = " / ".join(_clock(m) for m, _ in self.quarters())
        values = " / ".join(_num(v) for _, v in self.quarters())
        return text + f"\nbbox mAP50 at {marks}: {values}\nMLflow run {self.run_id}; files in {self.out_dir}"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        final, inside = self.final(), self.at_budget()
        data["final"] = dataclasses.asdict(final) if final else None
        data["at_budget"] = dataclasses.asdict(inside) if inside else None
        data["bbox_mAP50_at_quarters"] = [{"elapsed_s": m, "bbox_mAP50": v} for m, v in self.quarters()]
        return data


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------- inputs
def check_model_name(model: str) -> None:
    """A registered model name, else a one-line UserInputError naming ``--model`` (did-you-mean)."""
    import difflib

    import detmodels

    from ..errors import UserInputError

    names = list(detmodels.list_models())
    if model not in names:
        close = difflib.get_close_matches(model, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserInputError(f"--model: expected a registered model name{hint}, got {model!r}")


def _config_dirs() -> list[Path]:
    """Where the synthetic-data configs live: ./workflows/configs, then the checkout's (editable install)."""
    here = Path(__file__).resolve().parents[3] / "workflows" / "configs"
    return [d for d in (Path.cwd() / "workflows" / "configs", here) if d.is_dir()]


def family_config(model: str, dirs: Sequence[Path] | None = None) -> Path | None:
    """The short-budget config of ``model``: ``<dir>/*_synth.yaml`` whose ``model.name`` is ``model``,
    else the first (by file name) whose model has the same family and task; None if there is none."""
    import detmodels
    import yaml

    entry = detmodels.get_model_entry(model)
    same_family = []
    for folder in (_config_dirs() if dirs is None else dirs):
        for path in sorted(Path(folder).glob("*_synth.yaml")):
            try:
                name = ((yaml.safe_load(path.read_text()) or {}).get("model") or {}).get("name")
                other = detmodels.get_model_entry(name)
            except Exception:  # noqa: BLE001 - an unreadable or foreign file is simply not a candidate
                continue
            if name == model:
                return path
            if (other.family, other.task) == (entry.family, entry.task):
                same_family.append(path)
    return same_family[0] if same_family else None


def learn_data(root: Path, images: int, image_size: int,
               progress: Callable[[int, int], None] | None = None) -> Any:
    """The synthetic set (``images`` train + ``max(1, images // 4)`` val, seed 0) in ``root``: generated
    once, reused when ``root/val.json`` (written last, atomically) is there."""
    from ..data import SynthPaths, generate_synthetic

    paths = SynthPaths(root / "train.json", root / "val.json", root / "images")
    if paths.val_json.is_file() and paths.train_json.is_file():  # generate_synthetic writes them last
        return paths
    n_val = max(1, images // 4)
    return generate_synthetic(root, num_images=images + n_val, image_size=image_size, seed=0,
                              val_fraction=n_val / (images + n_val), progress=progress)


def default_data_dir(images: int, image_size: int | None) -> Path:
    """``$DETFLOW_HOME/bench/learn-data/synth-<images>-<side>px-seed0``: one set per size, reused."""
    from ..paths import state_dir

    return state_dir() / "bench" / "learn-data" / f"synth-{images}-{image_size or 320}px-seed0"


def bench_config(model: str, data: Any, *, base: Path | None, storage: str, epochs: int, eval_interval: int,
                 image_size: int | None = None, workers: int | None = None, overrides: Sequence[str] = ()):
    """The resolved TrainConfig of the run: ``base`` (a train config file) or the model's recipe
    defaults, with the bench's data, epochs, evaluation interval, workers and storage, then ``--set``."""
    from ..config import TrainConfig
    from ..config.compose import Layer, compose, set_layers
    from ..config.kinds import read_user_config
    from ..train.runner import resolve_train_config

    if base is not None:
        raw, source = read_user_config(base, "train"), str(base)
    else:
        raw, source = {"kind": "train", "train": {"batch_size": 4}}, "recipe defaults"
    bench: dict[str, Any] = {
        "name": f"bench-learn-{model}", "experiment": "detflow-bench", "model": {"name": model},
        "data.train": {"annotations": str(data.train_json), "images": str(data.images_dir)},
        "data.val": {"annotations": str(data.val_json), "images": str(data.images_dir)},
        "train.epochs": epochs, "train.eval_interval": eval_interval,
        "checkpoint": {"every": 1, "keep_last": 1, "max_failures": 0}, "storage": storage,
    }
    if (raw.get("model") or {}).get("name") == model:
        bench.pop("model")  # keep the base's model options
    if image_size is not None:
        bench["data.image_size"] = image_size
    if workers is not None:
        bench["scaling.workers"] = workers
    cfg = compose(TrainConfig, Layer(raw, source), Layer(bench, "bench learn"), *set_layers(overrides, "bench learn"))
    return resolve_train_config(cfg)


# --------------------------------------------------------------------------- plan
def probe(cfg: Any, *, warmup: int = 2, steps: int = 4) -> ProbeResult:
    """Time ``steps`` training steps after ``warmup`` (rank 0's shard, the run's batch and recipe, one
    torch thread per worker's CPU) and predictions on two val batches, scaled to the val set."""
    import torch

    from ..engine.loop import predict_batches
    from ..train.data import build_train_data
    from ..train.worker import _build_loop, build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(max(int(cfg.scaling.cpus_per_worker), 1))
    try:
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg, int(cfg.model.num_classes))
        world = int(cfg.scaling.workers)
        data = build_train_data(cfg, model.input_spec, rank=0, world=world)
        loop = _build_loop(cfg, model, data.recipe, data.steps_per_epoch, world, torch.device("cpu"), None,
                           progress=False)
        loop.max_steps = warmup
        loop.train_epoch(data.train_loader(0), 0)
        loop.max_steps = steps
        stats = loop.train_epoch(data.train_loader(0), 0)
        step_s = stats.wall_time / max(stats.steps, 1)
        eval_s = 0.0
        if data.val is not None:
            start = time.perf_counter()
            _, ids = predict_batches(loop.eval_model(), data.val_loader(), max_batches=2)
            eval_s = (time.perf_counter() - start) / max(len(ids), 1) * len(data.val) + COCO_EVAL_S
        return ProbeResult(step_s, data.steps_per_epoch, eval_s)
    finally:
        torch.set_num_threads(threads)


def plan_epochs(budget_s: float, probe_result: ProbeResult, *, eval_every_s: float | None = 60.0,
                eval_interval: int | None = None, startup_s: float = STARTUP_S,
                epoch_overhead_s: float = EPOCH_OVERHEAD_S) -> tuple[int, int]:
    """``(epochs, eval_interval)`` whose run ends nearest the budget (see the module docstring).

    ``eval_interval`` given wins; else the interval is the number of epochs closest to ``eval_every_s``.
    """
    epoch_s = probe_result.step_s * probe_result.steps_per_epoch + epoch_overhead_s
    interval = eval_interval or max(1, round((eval_every_s or epoch_s) / epoch_s))
    per_epoch = epoch_s + probe_result.eval_s / interval
    return max(1, round((budget_s - startup_s) / per_epoch)), interval


# --------------------------------------------------------------------------- measure
def _points(run_id: str, history: Sequence[dict], start_wall: float) -> list[LearnPoint]:
    from .. import tracking

    stamps = {step: ts / 1000.0 - start_wall for step, _, ts in tracking.Run(run_id).metric_history("epoch")}
    points = []
    for h in history:
        epoch = int(h.get("epoch", len(points)))
        points.append(LearnPoint(epoch + 1, stamps.get(epoch), h.get("train/loss"), h.get("val/bbox_mAP50"),
                                 h.get("val/segm_mAP50")))
    return points


def learn_figure(result: LearnResult):
    """val mAP50 (bbox, and segm for instance models) against elapsed minutes; the budget dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for key, label in (("bbox_mAP50", "bbox mAP50"), ("segm_mAP50", "segm mAP50")):
        pts = [(p.elapsed_s / 60.0, getattr(p, key)) for p in result.points
               if p.elapsed_s is not None and getattr(p, key) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.axvline(result.budget_s / 60.0, color="grey", linestyle="--", label="budget")
    ax.set(xlabel="wall time (min)", ylabel="val mAP50", xlim=(0, None), ylim=(-0.02, 1.02), title=f"{result.model}: val mAP50 vs wall time")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def _write_outputs(result: LearnResult, out: Path, say: Callable[[str], None]) -> None:
    """learn.json, learn.md and learn_curve.png in ``out``, the plot and JSON also on the MLflow run."""
    from .. import tracking
    from ..atomic import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "learn.json", json.dumps(result.to_dict(), indent=2))
    atomic_write(out / "learn.md", result.to_markdown() + "\n")
    fig = learn_figure(result)
    fig.savefig(out / "learn_curve.png", dpi=110)
    try:
        run = tracking.Run(result.run_id)
        run.log_figure(fig, "bench/learn_curve.png")
        run.log_dict(result.to_dict(), "bench/learn.json")
    except tracking.TrackingUnavailable as exc:
        say(f"warning: plot not logged to MLflow: {exc}")


def run_learn_bench(model: str, *, minutes: float = 20.0, images: int = 400, image_size: int | None = None,
                    workers: int | None = None, eval_every_s: float | None = 60.0, eval_interval: int | None = None,
                    epochs: int | None = None, config: Path | None = None, overrides: Sequence[str] = (),
                    data_dir: Path | None = None, out: Path | None = None,
                    print_fn: Callable[[str], None] | None = print, progress: bool = True,
                    synth_progress: Callable[[int, int], None] | None = None) -> LearnResult:
    """Train ``model`` for a ``minutes`` wall-clock budget and return its mAP50-vs-time curve.

    Args:
        images: synthetic train images (a quarter as many more for val). image_size: side of the synthetic
            images (default 320) and, when given, the training input size (default: the config's).
        workers: Ray Train workers (default: the config's). eval_every_s / eval_interval: evaluate about
            every this many seconds / every N epochs (N wins). epochs: skip the probe, train N epochs
            (evaluating every epoch unless ``eval_interval``).
        config: base train config (default: :func:`family_config`). overrides: ``--set KEY=VALUE``.
        data_dir: where the synthetic set is (or is written); out: where the table, JSON and plot go.
    """
    from ..paths import state_dir
    from ..train import run_training
    from ..train.data import model_task

    check_model_name(model)
    say = print_fn or (lambda s: None)
    data = learn_data(Path(data_dir or default_data_dir(images, image_size)), images, image_size or 320,
                      synth_progress)
    base = config if config is not None else family_config(model)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(out) if out is not None else state_dir() / "bench" / "learn" / f"{model}-{stamp}"
    storage = str(out / "runs")
    build = lambda n, k: bench_config(model, data, base=base, storage=storage, epochs=n, eval_interval=k,  # noqa: E731
                                      image_size=image_size, workers=workers, overrides=overrides)
    probe_result = None
    if epochs is None:
        say(f"probe: timing a few training steps and an evaluation of {model} …")
        probe_result = probe(build(PROBE_EPOCHS, 1))  # many epochs: epoch 0 is in the recipe's first stage
        epochs, eval_interval = plan_epochs(60.0 * minutes, probe_result, eval_every_s=eval_every_s,
                                            eval_interval=eval_interval)
        say(f"probe: {probe_result.step_s:.2f} s/step × {probe_result.steps_per_epoch} steps/epoch, evaluation "
            f"{probe_result.eval_s:.1f} s → {epochs} epochs, evaluation every {eval_interval}")
    eval_interval = eval_interval or 1
    cfg = build(epochs, eval_interval)
    ray_start = _start_ray()
    say(f"training {model} for {epochs} epochs ({base or 'recipe defaults'}) …")
    start_wall, start = time.time(), time.perf_counter()
    result = run_training(cfg, progress=progress)
    wall = time.perf_counter() - start
    n_train, n_val = (len(json.loads(p.read_text())["images"]) for p in (data.train_json, data.val_json))
    learn = LearnResult(model=model, task=model_task(model), config=str(base or "recipe defaults"),
                        budget_s=60.0 * minutes, images=n_train, val_images=n_val, image_size=cfg.data.image_size,
                        workers=cfg.scaling.workers, epochs=epochs, eval_interval=eval_interval, probe=probe_result,
                        points=_points(result.run_id, result.history, start_wall), wall_time_s=wall,
                        ray_start_s=ray_start, run_id=result.run_id, out_dir=str(out))
    _write_outputs(learn, out, say)
    return learn


def _start_ray() -> float:
    """Start the local Ray now (not inside the timed run); seconds it took (0 when already up)."""
    import ray

    start = time.perf_counter()
    if not ray.is_initialized():
        from ..ray_env import init_ray

        init_ray(log_to_driver=True, configure_logging=False)
    return time.perf_counter() - start

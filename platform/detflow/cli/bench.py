"""``detflow bench …``: training throughput (``bench train``), data-pipeline speed (``bench data``),
searches (``bench search``: ASHA vs none; ``bench nas``: NAS trials at a time), val mAP50 against
wall time of a time-budgeted training (``bench learn``), CLI start-up times (``bench cli``), one
training step (``bench step``) and an inference forward (``bench infer``); ``bench data|step|infer
--against mmdet`` run OpenMMLab mmdetection 3.3 beside detflow (``detflow.bench.against_mmdet``).

Other benchmark commands attach to :data:`bench_app` in this module.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import command_group
from .output import json_stdout

__all__ = ["register", "bench_app"]

bench_app = command_group("Benchmarks: training throughput, data pipelines, searches.",
                          "detflow bench train --workers 1,2")

_MMDET_VENV_HELP = ("--against mmdet: the venv made by scripts/bench/setup_mmdet.sh "
                    "(default: $DETFLOW_HOME/mmdet-venv, else ~/.cache/detflow/mmdet-venv).")


def _int_list(text: str, option: str = "--workers") -> list[int]:
    from ..errors import UserInputError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserInputError(f"{option}: expected a comma-separated list of positive integers, got {text!r}")
    return values


@bench_app.command("train")
def bench_train_cmd(
    model: str = typer.Option("rtmdet_tiny", "--model", help="Registered model name."),
    workers: str = typer.Option("1,2", "--workers", help="Comma-separated Ray Train worker counts."),
    image_size: int = typer.Option(256, "--image-size", min=32, help="Input size (synthetic images are this size)."),
    images: int = typer.Option(160, "--images", min=4, help="Synthetic training images."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per worker per step."),
    steps: int = typer.Option(20, "--steps", min=1, help="Steps per epoch per worker (the per-epoch checkpoint "
                              "and report cost ~0.5 s: very short epochs overstate the overhead)."),
    epochs: int = typer.Option(3, "--epochs", min=2, help="Epochs per run (the first is warm-up)."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Repetitions of the DDP runs; scaling efficiency "
                                "is given as the mean and range over them."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Training images/s through detflow (Ray Train + MLflow) for each worker count vs a bare torch loop,
    and DDP scaling of detflow vs bare torch DDP (gloo, no Ray) on the same machine.

    Example: detflow bench train --model rtmdet_tiny --workers 1,2 --image-size 256 --steps 20 --repeats 3
    """
    from ..bench.train_bench import run_train_bench

    with json_stdout(as_json):
        result = run_train_bench(model, _int_list(workers), image_size=image_size, images=images,
                                 batch_size=batch_size, steps=steps, epochs=epochs, repeats=repeats,
                                 print_fn=None if as_json else typer.echo)
    typer.echo(json.dumps(result.to_dict()) if as_json else result.to_markdown())


@bench_app.command("data")
def bench_data_cmd(
    recipe: str = typer.Option("rtmdet", "--recipe", help="Recipe whose stage-1 pipeline to time."),
    images: int = typer.Option(200, "--images", min=1, help="Timed samples per pipeline."),
    image_size: int = typer.Option(320, "--image-size", min=32, help="Training input size."),
    source_size: Optional[int] = typer.Option(None, "--source-size", min=32, show_default=False,
                                              help="Side of the synthetic source JPEGs (default: --image-size; "
                                              "COCO images are ~640)."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="COCO JSON (default: synthetic data)."),
    images_dir: Optional[Path] = typer.Option(None, "--images-dir", help="Image directory of --annotations."),
    against: Optional[str] = typer.Option(None, "--against", show_default=False,
                                          help="mmdet: also run mmdetection 3.3's RTMDet-tiny stage-1 pipeline "
                                          "on the same synthetic images, side by side (recipe rtmdet, tiny size)."),
    mmdet_venv: Optional[Path] = typer.Option(None, "--mmdet-venv", show_default=False, help=_MMDET_VENV_HELP),
    repeats: int = typer.Option(2, "--repeats", min=1, help="--against: pairs of runs (detflow, mmdet)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Images/s of the cached (CachedMosaic + CachedMixUp) vs uncached pipeline vs decode+resize;
    with --against mmdet, beside mmdetection 3.3's (each side in its own process, back to back).

    Example: detflow bench data --recipe rtmdet --images 200 --source-size 640 --against mmdet --repeats 2
    """
    if against is not None:
        from ..errors import UserInputError

        if annotations is not None:
            raise UserInputError(f"--annotations {annotations}: --against mmdet runs on `detflow data synth` images")
        if recipe != "rtmdet":
            raise UserInputError(f"--recipe {recipe}: --against mmdet compares the rtmdet recipe only")
        _against("data", against, mmdet_venv, repeats, as_json, image_size=image_size, images=images,
                 source_size=source_size)
        return
    from ..bench.data_bench import format_data_bench, run_data_bench

    dataset = (annotations, images_dir or annotations.parent) if annotations is not None else None
    if source_size is not None and annotations is not None:
        from ..errors import UserInputError

        raise UserInputError(f"--source-size {source_size}: sizes the synthetic images; --annotations gives its own")
    result = run_data_bench(recipe, images, image_size, dataset, source_size=source_size, print_fn=None)
    typer.echo(json.dumps(result, default=str) if as_json else format_data_bench(result))


@bench_app.command("step")
def bench_step_cmd(
    image_size: int = typer.Option(320, "--image-size", min=32, help="Input size of the batch."),
    batch: int = typer.Option(4, "--batch", min=1, help="Images per step (about 5 boxes each)."),
    steps: int = typer.Option(20, "--steps", min=1, help="Timed steps (the median is reported)."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed steps first."),
    against: Optional[str] = typer.Option(None, "--against", show_default=False,
                                          help="mmdet: the same step in mmdetection 3.3 on the same tensors."),
    mmdet_venv: Optional[Path] = typer.Option(None, "--mmdet-venv", show_default=False, help=_MMDET_VENV_HELP),
    repeats: int = typer.Option(2, "--repeats", min=1, help="--against: pairs of runs (detflow, mmdet)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Milliseconds of one RTMDet-tiny (80 classes) training step on 1 thread: zero_grad, forward + loss,
    backward, SGD step (detflow's TrainLoop.train_step); with --against mmdet, beside mmdetection 3.3's.

    Example: detflow bench step --against mmdet --repeats 2
    """
    settings = dict(image_size=image_size, batch=batch, steps=steps, warmup=warmup)
    if against is not None:
        _against("step", against, mmdet_venv, repeats, as_json, **settings)
        return
    import tempfile

    import torch

    from ..bench.detflow_side import run_step, write_tensors

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="detflow-bench-step-") as tmp:
        tensors = write_tensors(Path(tmp) / "tensors.npz", batch=batch, image_size=image_size)
        result = run_step(tensors, steps=steps, warmup=warmup)
    typer.echo(json.dumps(result) if as_json else
               f"rtmdet_tiny training step, batch {batch} × {image_size} px, 1 thread: median "
               f"{result['median_ms']:.1f} ms (min {result['min_ms']:.1f}), {result['cpu_ms_per_run']:.1f} CPU-ms")


@bench_app.command("infer")
def bench_infer_cmd(
    model: str = typer.Option("rtmdet_tiny", "--model", help="rtmdet_tiny or rtmdet_s."),
    image_size: int = typer.Option(640, "--image-size", min=32, help="Input size (batch 1)."),
    runs: int = typer.Option(10, "--runs", min=1, help="Timed forwards (the median is reported)."),
    against: str = typer.Option("mmdet", "--against", help="The implementation to compare with: mmdet."),
    mmdet_venv: Optional[Path] = typer.Option(None, "--mmdet-venv", show_default=False, help=_MMDET_VENV_HELP),
    repeats: int = typer.Option(2, "--repeats", min=1, help="Pairs of runs (detflow, mmdet)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Milliseconds of an eval-mode forward to raw head outputs (no NMS), batch 1, 1 thread, detflow
    beside mmdetection 3.3 on the same input.

    Example: detflow bench infer --model rtmdet_s --image-size 640 --against mmdet
    """
    _against("infer", against, mmdet_venv, repeats, as_json, model=model, image_size=image_size, steps=runs)


def _against(bench: str, against: str, mmdet_venv: Optional[Path], repeats: int, as_json: bool, **settings) -> None:
    """Run ``bench`` on detflow and mmdet side by side and print the table (or JSON)."""
    from ..bench.against_mmdet import run_against_mmdet
    from ..errors import UserInputError

    if against != "mmdet":
        raise UserInputError(f"--against: expected mmdet, got {against!r}")
    result = run_against_mmdet(bench, mmdet_venv=mmdet_venv, repeats=repeats,
                               print_fn=lambda msg: typer.echo(msg, err=True), **settings)
    typer.echo(json.dumps(result.to_dict()) if as_json else result.to_markdown())


@bench_app.command("search")
def bench_search_cmd(
    trials: int = typer.Option(16, "--trials", min=1, help="Trials per sweep."),
    epochs: int = typer.Option(6, "--epochs", min=1, help="Epochs per trial (ASHA's maximum)."),
    images: int = typer.Option(96, "--images", min=2, help="Synthetic training images (+ a quarter for val)."),
    image_size: int = typer.Option(160, "--image-size", min=32, help="Input size (synthetic images are this size)."),
    max_concurrent: int = typer.Option(2, "--max-concurrent", min=1, help="Trials at a time (1 CPU each)."),
    metric: str = typer.Option("val/bbox_mAP50", "--metric", help="Metric the sweeps optimise."),
    mode: str = typer.Option("max", "--mode", help="max or min."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """The same TPE sweep of rtmdet_tiny (soft-centre α/β, mosaic cache length, neck expansion ratio)
    with ASHA vs without early stopping: best metric, trial-epochs, wall time, Tune overhead per trial.

    Example: detflow bench search --trials 16 --epochs 6 --images 96 --image-size 160
    """
    from ..bench.search_bench import run_search_bench
    from ..errors import UserInputError

    if mode not in ("max", "min"):
        raise UserInputError(f"--mode: expected max or min, got {mode!r}")
    with json_stdout(as_json):
        result = run_search_bench(trials=trials, epochs=epochs, images=images, image_size=image_size,
                                  max_concurrent=max_concurrent, metric=metric, mode=mode,
                                  print_fn=None if as_json else typer.echo)
    typer.echo(json.dumps(result.to_dict()) if as_json else result.to_markdown())


@bench_app.command("nas")
def bench_nas_cmd(
    trials: int = typer.Option(12, "--trials", min=1, help="Architectures sampled per search."),
    concurrency: str = typer.Option("1,2", "--concurrency",
                                    help="Comma-separated trials-at-a-time values, one search each."),
    epochs: int = typer.Option(2, "--epochs", min=1, help="Proxy epochs per trial."),
    images: int = typer.Option(24, "--images", min=4, help="Synthetic training images (a quarter held out for AP)."),
    image_size: int = typer.Option(128, "--image-size", min=128, help="Proxy input size (a multiple of 128)."),
    cost: str = typer.Option("gmacs", "--cost", help="Second objective: gmacs, params_M or latency_ms "
                             "(an ONNX export timed in onnxruntime per trial)."),
    scheduler: str = typer.Option("none", "--scheduler", help="none (same trial-epochs in every run) or asha."),
    metric: str = typer.Option("val/bbox_mAP50", "--metric", help="Accuracy objective (maximised)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """The same SpineNet NAS (TPE, seed 0, AP and a cost) with 1 and 2 trials at a time: wall time,
    trials per hour, the most trials running at once, the best AP of each.

    Example: detflow bench nas --trials 12 --concurrency 1,2 --epochs 2 --cost latency_ms
    """
    from ..archsearch.cost import COSTS
    from ..bench.nas_bench import run_nas_bench
    from ..errors import UserInputError

    if cost not in COSTS:
        raise UserInputError(f"--cost: expected one of {', '.join(COSTS)}, got {cost!r}")
    if scheduler not in ("none", "asha"):
        raise UserInputError(f"--scheduler: expected none or asha, got {scheduler!r}")
    if image_size % 128:
        raise UserInputError(f"--image-size: expected a multiple of 128 (SpineNet's L7 stride), got {image_size}")
    with json_stdout(as_json):
        result = run_nas_bench(trials=trials, concurrency=_int_list(concurrency, "--concurrency"), epochs=epochs,
                               images=images, image_size=image_size, cost=cost, scheduler=scheduler,
                               metric=metric, print_fn=None if as_json else typer.echo)
    typer.echo(json.dumps(result.to_dict()) if as_json else result.to_markdown())


@bench_app.command("learn")
def bench_learn_cmd(
    model: str = typer.Option(..., "--model", help="Registered model name.", show_default=False),
    minutes: float = typer.Option(20.0, "--minutes", min=0.05, help="Wall-clock budget of the training run."),
    images: int = typer.Option(400, "--images", min=4, help="Synthetic training images (+ a quarter for val)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=32, show_default=False,
                                             help="Synthetic image side and training input size "
                                             "(default: 320 px images, the config's input size)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, show_default=False,
                                          help="Ray Train workers (default: the config's)."),
    eval_every_s: Optional[float] = typer.Option(None, "--eval-every-s", min=1, show_default=False,
                                                 help="Evaluate about every this many seconds (default: 60)."),
    eval_interval: Optional[int] = typer.Option(None, "--eval-interval", min=1, show_default=False,
                                                help="Evaluate every N epochs (instead of --eval-every-s)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, show_default=False,
                                         help="Train N epochs (no probe, no budget plan)."),
    config: Optional[Path] = typer.Option(None, "--config", show_default=False,
                                          help="Base train config (default: workflows/configs/<family>_synth.yaml)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field of the run: KEY=VALUE (repeatable)."),
    data: Optional[Path] = typer.Option(None, "--data", show_default=False,
                                        help="Synthetic set directory (reused, or written there) "
                                        "(default: $DETFLOW_HOME/bench/learn-data/…)."),
    out: Optional[Path] = typer.Option(None, "--out", show_default=False,
                                       help="Where learn.md, learn.json, learn_curve.png and the run go "
                                       "(default: $DETFLOW_HOME/bench/learn/MODEL-STAMP)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Val mAP50 against wall time: train MODEL with its family's short-budget recipe on the synthetic set
    for a wall-clock budget (epochs planned from a probe of the step and evaluation times), evaluating at
    regular points; prints (elapsed, epoch, train loss, bbox mAP50[, segm mAP50]) and the final figure,
    writes a plot of mAP50 vs wall time (also logged to the run in MLflow).

    Example: detflow bench learn --model rtmdet_tiny --minutes 20 --images 400 --workers 2
    """
    from ..bench.learn_bench import check_model_name, default_data_dir, run_learn_bench
    from ..errors import UserInputError

    check_model_name(model)
    if eval_every_s is not None and eval_interval is not None:
        raise UserInputError(f"--eval-every-s {eval_every_s:g} and --eval-interval {eval_interval}: give one of them")
    data = data or default_data_dir(images, image_size)
    _synth_with_bar(data, images, image_size or 320)
    with json_stdout(as_json):
        result = run_learn_bench(model, minutes=minutes, images=images, image_size=image_size, workers=workers,
                                 eval_every_s=eval_every_s or 60.0, eval_interval=eval_interval, epochs=epochs,
                                 config=config, overrides=set_, data_dir=data, out=out,
                                 print_fn=None if as_json else typer.echo, progress=not as_json)
    typer.echo(json.dumps(result.to_dict()) if as_json else result.to_markdown())


@bench_app.command("cli")
def bench_cli_cmd(
    runs: int = typer.Option(5, "--runs", min=1, help="Timed runs per command (median reported)."),
    config: str = typer.Option("workflows/configs/rtmdet_tiny_synth.yaml", "--config",
                               help="Config file timed with `config validate` (empty: leave the case out)."),
    workflow: str = typer.Option("workflows/quickstart.yaml", "--workflow",
                                 help="Workflow timed as a cached re-run; it runs once first, un-timed, to fill "
                                 "the cache (empty: leave the case out)."),
    no_lineage: bool = typer.Option(False, "--no-lineage", help="Run the workflow with --no-lineage (no MLflow)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Start-up wall time of `detflow --help`, `models list`, `config validate` and a cached workflow
    re-run: median of N runs, each in a fresh `python -m detflow` process, beside each target and the
    load average (docs/benchmarks.md has the protocol and the figures).

    Example: detflow bench cli --runs 5 --workflow workflows/quickstart.yaml
    """
    from ..bench.cli_bench import run_cli_bench

    result = run_cli_bench(runs, config=config or None, workflow=workflow or None, lineage=not no_lineage,
                           print_fn=None if as_json else lambda msg: typer.echo(msg, err=True))
    typer.echo(json.dumps(result.to_dict()) if as_json else result.to_markdown())


@bench_app.command("ort-profile")
def bench_ort_profile_cmd(
    fp32: Path = typer.Argument(..., help="fp32 graph: a .onnx file or an export directory (model.onnx)."),
    int8: Path = typer.Argument(..., help="int8 graph: a .onnx file or a quantisation output directory "
                                "(model.int8.onnx; its sensitivity.json names the convs kept float)."),
    iters: int = typer.Option(50, "--iters", min=1, help="Timed runs per graph (after 10 warm-up runs)."),
    top: int = typer.Option(15, "--top", min=1, help="Op types and nodes listed."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Op-level ONNX Runtime profile of an fp32 and an int8 graph (CPU EP, 1 thread, batch 1): latency ratio,
    ms and share per op type side by side, the top nodes of the int8 graph ORT runs, and why each of its
    float nodes stays float (keep_float, float prediction outputs, unannotated ops, layout, head decode).

    Example: detflow bench ort-profile exports/train-320x320 ptq/ --iters 50 --top 15
    """
    from ..bench.ort_profile import profile_pair

    report = profile_pair(fp32, int8, iters=iters,
                          progress=None if as_json else lambda msg: typer.echo(msg, err=True))
    typer.echo(json.dumps(report.to_dict(top)) if as_json else report.to_markdown(top))


def _synth_with_bar(root: Path, images: int, image_size: int) -> None:
    """The bench's synthetic set in ``root`` (reused when there), with a rich progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..bench.learn_bench import learn_data

    if (root / "val.json").is_file() and (root / "train.json").is_file():
        return
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("images", total=None)
        learn_data(root, images, image_size, lambda done, total: bar.update(task, completed=done, total=total))


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")

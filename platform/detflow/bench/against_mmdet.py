"""``detflow bench data|step|infer --against mmdet``: detflow and OpenMMLab mmdetection 3.3 side by side.

Each side runs in its own process, back to back: the detflow side as ``python -m
detflow.bench.detflow_side`` (this interpreter), the mmdet side as ``scripts/bench/mmdet_side.py`` in
a separate virtual environment made by ``scripts/bench/setup_mmdet.sh`` (never the project's). Both
read the same synthetic images (:func:`detflow.data.synth.generate_synthetic`) or the same ``.npz``
tensors (:func:`detflow.bench.detflow_side.write_tensors`). Each pair runs ``repeats`` times, the
1-minute load average read before each; the table gives each side's range and the range of the
ratio detflow ÷ mmdet (docs/benchmarks.md, "detflow vs mmdetection 3.3", has the protocols).

>>> result = run_against_mmdet("step", repeats=2)             # doctest: +SKIP
>>> print(result.to_markdown())                               # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from ..errors import RuntimeFailure, UserInputError

__all__ = ["default_mmdet_venv", "check_mmdet_venv", "mmdet_side_script", "AgainstResult", "run_against_mmdet",
           "BENCHES"]

MARKER = ".detflow-mmdet-ready"
SETUP = "scripts/bench/setup_mmdet.sh"
BENCHES = ("data", "step", "infer")
# figure name -> (key path in a side's JSON, unit, True when higher is better)
_FIGURES: dict[str, list[tuple[str, tuple[str, ...], str, bool]]] = {
    "data": [("stage 1 (CachedMosaic…CachedMixUp)", ("images_per_s", "cached"), "img/s", True),
             ("stage 1, CPU", ("images_per_cpu_s", "cached"), "img/CPU-s", True),
             ("ceiling (decode+resize+pad+pack)", ("images_per_s", "ceiling"), "img/s", True),
             ("ceiling, CPU", ("images_per_cpu_s", "ceiling"), "img/CPU-s", True)],
    "step": [("training step, median", ("median_ms",), "ms", False),
             ("training step, CPU", ("cpu_ms_per_run",), "CPU-ms", False)],
    "infer": [("forward, median", ("median_ms",), "ms", False),
              ("forward, CPU", ("cpu_ms_per_run",), "CPU-ms", False)],
}


def default_mmdet_venv() -> Path:
    """``$DETFLOW_HOME/mmdet-venv``, or ``~/.cache/detflow/mmdet-venv`` without ``DETFLOW_HOME``
    (the default of ``scripts/bench/setup_mmdet.sh`` too)."""
    home = os.environ.get("DETFLOW_HOME")
    return Path(home) / "mmdet-venv" if home else Path.home() / ".cache" / "detflow" / "mmdet-venv"


def check_mmdet_venv(venv: str | Path) -> Path:
    """The venv's python; a one-line :class:`UserInputError` when the venv is not a finished setup."""
    venv = Path(venv).expanduser()
    python = venv / "bin" / "python"
    if not (python.exists() and (venv / MARKER).is_file()):
        raise UserInputError(f"--mmdet-venv {venv}: no mmdetection 3.3 venv there; "
                             f"create it with: {SETUP} {venv}")
    return python


def mmdet_side_script() -> Path:
    """``scripts/bench/mmdet_side.py`` of the checkout this package runs from."""
    script = Path(__file__).resolve().parents[3] / "scripts" / "bench" / "mmdet_side.py"
    if not script.is_file():
        raise UserInputError(f"{script}: not found; --against mmdet runs from a detflow source checkout")
    return script


def load_average() -> float:
    """The 1-minute load average (what ``uptime`` prints first)."""
    return os.getloadavg()[0]


def _package_roots() -> list[str]:
    """The directories detflow and detmodels import from (the detflow side's ``PYTHONPATH``)."""
    import detmodels

    return [str(Path(__file__).resolve().parents[2]), str(Path(detmodels.__file__).resolve().parents[1])]


def _run_side(side: str, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one side; its last JSON stdout line is its result."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeFailure(f"the {side} side ({' '.join(argv[1:4])} …) failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(lines[-1])


def _dig(result: dict[str, Any], keys: tuple[str, ...]) -> float:
    for key in keys:
        result = result[key]
    return float(result)  # type: ignore[arg-type]


@dataclasses.dataclass
class AgainstResult:
    """Both sides' JSON of every pair, and the load average before each pair."""

    bench: str
    settings: dict[str, Any]
    pairs: list[dict[str, dict[str, Any]]]
    loads: list[float]

    def figures(self) -> list[dict[str, Any]]:
        """Per figure: each side's values over the pairs and the detflow ÷ mmdet ratio of each pair."""
        rows = []
        for name, keys, unit, higher_better in _FIGURES[self.bench]:
            ours = [_dig(p["detflow"], keys) for p in self.pairs]
            theirs = [_dig(p["mmdet"], keys) for p in self.pairs]
            rows.append({"figure": name, "unit": unit, "higher_is_better": higher_better, "detflow": ours,
                         "mmdet": theirs, "ratio": [a / b for a, b in zip(ours, theirs)]})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"bench": self.bench, "settings": self.settings, "loads": self.loads, "figures": self.figures(),
                "pairs": self.pairs}

    def to_markdown(self) -> str:
        settings = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        lines = [f"detflow vs mmdetection 3.3, bench {self.bench} ({settings}); {len(self.pairs)} pairs, "
                 f"1-min load before each: {', '.join(f'{v:.1f}' for v in self.loads)}", "",
                 "| figure | unit | detflow | mmdet 3.3 | detflow ÷ mmdet | better |", "|---|---|---:|---:|---:|---|"]
        for row in self.figures():
            better = ">1 = detflow faster" if row["higher_is_better"] else "<1 = detflow faster"
            lines.append(f"| {row['figure']} | {row['unit']} | {_span(row['detflow'])} | {_span(row['mmdet'])} | "
                         f"{_span(row['ratio'], '.2f')} | {better} |")
        return "\n".join(lines)


def _span(values: list[float], fmt: str = ".1f") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}–{hi:{fmt}}"


def _side_commands(bench: str, work: Path, mmdet_python: Path, *, image_size: int, images: int, steps: int,
                   warmup: int, model: str, batch: int, seed: int, source_size: int | None = None
                   ) -> tuple[list[str], list[str]]:
    """The two command lines (detflow, mmdet) of one pair, after writing their shared inputs to ``work``."""
    from .detflow_side import data_warmup, write_tensors

    if bench == "data":
        from ..data.synth import generate_synthetic

        paths = generate_synthetic(work / "synth", num_images=images, seed=seed,
                                   image_size=source_size or image_size, val_fraction=0.0)
        common = ["--ann", str(paths.train_json), "--images-dir", str(paths.images_dir),
                  "--image-size", str(image_size), "--images", str(images), "--seed", str(seed)]
        extra = ["--warmup", str(data_warmup())]
    else:
        tensors = write_tensors(work / "tensors.npz", batch=batch if bench == "step" else 1, image_size=image_size,
                                seed=seed)
        common = ["--tensors", str(tensors)]
        extra = []
        if bench == "step":
            common += ["--steps", str(steps), "--warmup", str(warmup)]
        else:
            common += ["--model", model, "--runs", str(steps)]
    ours = [sys.executable, "-m", "detflow.bench.detflow_side", bench, *common]
    theirs = [str(mmdet_python), str(mmdet_side_script()), bench, *common, *extra]
    return ours, theirs


def run_against_mmdet(bench: str, *, mmdet_venv: str | Path | None = None, repeats: int = 2, image_size: int = 320,
                      images: int = 200, steps: int = 20, warmup: int = 3, model: str = "rtmdet_tiny", batch: int = 4,
                      seed: int = 0, source_size: int | None = None,
                      print_fn: Callable[[str], None] | None = print) -> AgainstResult:
    """Run ``bench`` (``data``, ``step`` or ``infer``) on both sides ``repeats`` times, back to back.

    Args:
        bench: ``data`` (images/s of the stage-1 pipeline and the ceiling, ``images`` timed after the
            caches' warm-up), ``step`` (RTMDet-tiny training step, ``batch`` × ``image_size``², median
            of ``steps`` after ``warmup``) or ``infer`` (``model`` eval forward, batch 1, median of ``steps``).
        mmdet_venv: the venv of ``scripts/bench/setup_mmdet.sh`` (default :func:`default_mmdet_venv`).
        source_size: ``data`` only: side of the synthetic source JPEGs both sides read (default ``image_size``).
    """
    if bench not in BENCHES:
        raise UserInputError(f"bench: expected one of {', '.join(BENCHES)}, got {bench!r}")
    if model not in ("rtmdet_tiny", "rtmdet_s"):
        raise UserInputError(f"--model: expected rtmdet_tiny or rtmdet_s (the mmdet configs timed), got {model!r}")
    if repeats < 1:
        raise UserInputError(f"--repeats: expected a positive number, got {repeats}")
    mmdet_python = check_mmdet_venv(mmdet_venv or default_mmdet_venv())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [*_package_roots(),
                                                                     os.environ.get("PYTHONPATH", "")]))}
    pairs, loads = [], []
    with tempfile.TemporaryDirectory(prefix="detflow-vs-mmdet-") as tmp:
        ours, theirs = _side_commands(bench, Path(tmp), mmdet_python, image_size=image_size, images=images,
                                      steps=steps, warmup=warmup, model=model, batch=batch, seed=seed,
                                      source_size=source_size)
        mm_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        for r in range(repeats):
            loads.append(load_average())
            if print_fn is not None:
                print_fn(f"pair {r + 1}/{repeats}: load {loads[-1]:.1f}; detflow …")
            pair = {"detflow": _run_side("detflow", ours, env)}
            if print_fn is not None:
                print_fn(f"pair {r + 1}/{repeats}: mmdet …")
            pair["mmdet"] = _run_side("mmdet", theirs, mm_env)
            pairs.append(pair)
    settings = {"data": {"image size": image_size, "source images": source_size or image_size, "images": images},
                "step": {"model": "rtmdet_tiny", "batch": batch, "image size": image_size, "steps": steps,
                         "warm-up": warmup},
                "infer": {"model": model, "batch": 1, "image size": image_size, "runs": steps}}[bench]
    return AgainstResult(bench, {**settings, "threads": 1}, pairs, loads)

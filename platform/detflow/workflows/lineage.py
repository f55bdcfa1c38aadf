"""Workflow lineage in MLflow: one parent run per workflow run, one child run per step.

Child runs are named after the step id and tagged ``detflow.workflow``, ``detflow.workflow_run_id``,
``detflow.step_id``, ``detflow.step_kind``, ``detflow.family``, ``detflow.git_commit`` and
``dataset.fingerprint``, with a description (``mlflow.note.content``), ``mlflow.source.name``
(``detflow workflow NAME``) and the step's datasets as MLflow dataset inputs. A model-producing step
logs its model files under ``model/`` and as an MLflow logged model (checkpoint, onnx, int8 or
engine, the step's metrics attached), and registers that logged model (``models:/<model_id>``) as a
new version of the workflow's registered model with lineage tags (source step, upstream steps,
the upstream steps' registered versions ``detflow.upstream_version=NAME/N,…`` and per field
``detflow.checkpoint_version`` / ``detflow.teacher_version`` / ``detflow.init_version``, teacher,
calibration set); the alias ``candidate`` points at the last successful one. Each logged model also
holds an ``MLmodel`` file (``python_function`` flavour, loader module :mod:`detflow.predict.pyfunc`,
backend by model type), so ``mlflow.pyfunc.load_model("models:/NAME@candidate")`` and ``mlflow
models serve`` return detections. A benchmark step with a ``promote`` rule that held points the
rule's alias (e.g. ``champion``) at the registered version of the rule's artifact step: the only way
a workflow sets an alias other than ``candidate``.
A benchmark step's table goes up as CSV/Markdown artifacts (child and parent) and metrics, with a
plot of mAP against latency. Uses :class:`detflow.tracking.Run` only (runs by id, no global active
run), so the driver can track several steps at once.

Nothing goes to MLflow unredacted: the logged spec, the ``with:`` params, error texts and tags pass
through :func:`detflow.redact.redact` (``user:password@`` in URLs, secret-named keys, ``token=…``
pairs, AWS keys).
"""
from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .. import artifact_store, tracking
from ..redact import redact
from .context import StepContext
from .schema import Step, Workflow

__all__ = ["Lineage", "flatten_metrics", "plot_map_vs_latency", "redacted", "CANDIDATE_ALIAS"]

CANDIDATE_ALIAS = "candidate"
_MODEL_FILES = ("model.pt", "config.yaml", "meta.json")
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-./ ]+")


def flatten_metrics(metrics: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested mapping as ``a/b`` metric names."""
    out: dict[str, float] = {}
    if not isinstance(metrics, dict):
        return out
    for key, value in metrics.items():
        name = _METRIC_NAME.sub("_", f"{prefix}{key}")
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            out[name] = float(value)
    return out


redacted = redact  # the one rule (detflow.redact), under the name this module always exported


def _git_commit() -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _family(wf: Workflow, step: Step) -> str:
    model = getattr(step.with_, "model", None) or wf.defaults.model
    name = model if isinstance(model, str) else getattr(model, "name", None)
    if not name:
        return "unknown"
    try:
        import detmodels

        return detmodels.get_model_entry(name).family
    except Exception:  # noqa: BLE001 — an unknown name still gets a tag
        return name.split("_")[0]


def plot_map_vs_latency(rows: list[dict], path: str | Path) -> Path | None:
    """mAP50 against p50 latency per image (log scale): one colour per (artifact, backend, precision),
    one marker per batch size, so what each step (distill, int8 …) bought in speed and accuracy shows."""
    points = [r for r in rows if isinstance(r.get("p50_ms"), (int, float)) and isinstance(r.get("mAP50"), (int, float))]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    series: dict[str, list[dict]] = {}
    for r in points:
        series.setdefault(f"{r.get('artifact')} · {r.get('backend')} · {r.get('precision')}", []).append(r)
    markers = "os^Dv<>p*"
    batches = sorted({int(r.get("batch_size") or 1) for r in points})
    for label, items in series.items():
        items = sorted(items, key=lambda r: int(r.get("batch_size") or 1))
        xs = [r["p50_ms"] / max(int(r.get("batch_size") or 1), 1) for r in items]
        ys = [r["mAP50"] for r in items]
        line, = ax.plot(xs, ys, "-", alpha=0.5, label=label)
        for x, y, r in zip(xs, ys, items):
            ax.plot([x], [y], markers[batches.index(int(r.get("batch_size") or 1)) % len(markers)], color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per image (ms, log scale); markers: batch " + ", ".join(
        f"{b}={markers[i % len(markers)]}" for i, b in enumerate(batches)))
    ax.set_ylabel("mAP50 (val)")
    ax.set_title("accuracy vs latency per artifact and backend")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


class Lineage:
    """MLflow runs and registry versions of one workflow run (see module docstring)."""

    def __init__(self, wf: Workflow, run_id: str):
        self.wf, self.run_id = wf, run_id
        self.uri = tracking.configure()
        self.parent: str | None = None
        self.commit = _git_commit()
        self.versions: dict[str, str] = {}  # step id → the version registered from it in this run

    def base_tags(self) -> dict[str, str]:
        """Grouping (workflow, workflow run id, git commit) and source tags every run of it carries."""
        return tracking.readable_tags(source=f"detflow workflow {self.wf.name}", workflow=self.wf.name,
                                      workflow_run_id=self.run_id, git_commit=self.commit)

    def start_workflow(self, existing: str | None = None) -> str:
        """Create (or, on resume, reopen) the parent run; returns its id."""
        if existing:
            tracking.Run(existing).reopen()
            self.parent = existing
            return existing
        steps = ", ".join(f"{s.id} ({s.uses})" for s in self.wf.steps)
        tags = {**self.base_tags(), "detflow.kind": "workflow",
                "mlflow.note.content": f"workflow {self.wf.name}, run {self.run_id}: {steps}"}
        run = tracking.Run.create(self.run_id, experiment=self.wf.name, tags=tags)
        self.parent = run.run_id
        run.log_dict(self.wf.to_dict(), "workflow.yaml")
        return self.parent

    def step_tags(self, step: Step) -> dict[str, str]:
        return {**self.base_tags(), "detflow.step_id": step.id, "detflow.step_kind": step.uses,
                "detflow.family": _family(self.wf, step)}

    def start_step(self, step: Step, cache_key: str) -> str:
        model = getattr(step.with_, "model", None) or self.wf.defaults.model
        model = model if isinstance(model, str) else getattr(model, "name", "")
        tags = {**self.step_tags(step), "detflow.cache_key": cache_key,
                "mlflow.note.content": tracking.step_description(step.uses, step.id, self.wf.name, model or "")}
        run = tracking.Run.create(step.id, experiment=self.wf.name, tags=tags, parent=self.parent)
        params = flatten_params(redacted(step.with_.model_dump(mode="json", exclude_none=True)))
        run.log_params(dict(list(params.items())[:200]))
        return run.run_id

    def step_succeeded(self, step: Step, child: str | None, outputs: dict, inputs: dict[str, dict]) -> None:
        if child is None:
            return
        run = tracking.Run(child)
        self._tag_dataset(step, run, inputs)
        if step.uses == "benchmark":
            self._log_table(run, outputs)
            if outputs.get("promote"):
                self._promote(run, outputs["promote"])
        model_id = self._register(step, run, outputs) if step.kind.registers_model else None
        # once, attached to the step's logged model when it made one (the model page shows them)
        run.log_metrics(0, flatten_metrics(outputs.get("metrics") or {}), model_id=model_id)
        run.end("FINISHED")

    def step_failed(self, step: Step, child: str | None, error: str) -> None:
        if child is None:
            return
        run = tracking.Run(child)
        run.set_tags({"detflow.error": redacted(error)[:4000]})
        run.end("KILLED" if error == "cancelled" else "FAILED")

    def finish(self, status: str, result: Any) -> None:
        if not self.parent:
            return
        summary = {sid: {k: v for k, v in info.items() if k in ("status", "attempts", "duration_s", "error")}
                   for sid, info in result.steps.items()}
        parent = tracking.Run(self.parent)
        parent.log_dict(summary, "steps.json")
        mlflow_status = {"succeeded": "FINISHED", "cancelled": "KILLED", "interrupted": "KILLED"}.get(status, "FAILED")
        parent.set_tags({"detflow.status": status})
        parent.end(mlflow_status)

    # ------------------------------------------------------------------------------- details
    def _tag_dataset(self, step: Step, child: tracking.Run, inputs: dict[str, dict]) -> None:
        if "data" not in type(step.with_).model_fields:
            return
        ctx = StepContext(self.run_id, step.id, step.uses, self.wf.name, storage="",
                          defaults=self.wf.defaults.model_dump(mode="json", exclude_unset=True, exclude_none=True), inputs=inputs)
        try:
            data = ctx.dataset(step.with_.data)
        except Exception:  # noqa: BLE001 — a dataset from a base config: no tag
            return
        split = data.get("train") or data.get("val")
        if split and artifact_store.exists(split["annotations"]):
            child.set_tags({"dataset.fingerprint": tracking.dataset_fingerprint(split["annotations"], split["images"]),
                            "dataset.annotations": split["annotations"]})
        first = "calibration" if step.uses in ("qat", "ptq") else "train"
        splits = {ctx_name: data.get(key) for ctx_name, key in ((first, "train"), ("val", "val"))}
        tracking.log_datasets(child, {k: v for k, v in splits.items()
                                      if v and artifact_store.exists(v["annotations"])})

    def _log_table(self, child: tracking.Run, outputs: dict) -> None:
        parent = tracking.Run(self.parent) if self.parent else None
        targets = [child] + ([parent] if parent else [])
        for key in ("table_csv", "table_md"):
            if outputs.get(key) and artifact_store.exists(outputs[key]):
                local = artifact_store.materialize(outputs[key])
                for run in targets:
                    run.log_artifact(local, "benchmark")
        rows = outputs.get("rows") or []
        with tempfile.TemporaryDirectory() as tmp:
            plot = plot_map_vs_latency(rows, Path(tmp) / "map_vs_latency.png")
            if plot is not None:
                for run in targets:
                    run.log_artifact(plot, "benchmark")
        if parent:
            parent.log_metrics(0, {f"bench/{k}": v for k, v in flatten_metrics(outputs.get("metrics") or {}).items()})

    def _model_files(self, outputs: dict) -> list[Path]:
        """Local copies of a step's model files (its checkpoint's and its ONNX model), wherever stored."""
        stored: list[str] = []
        ckpt = outputs.get("checkpoint")
        if isinstance(ckpt, str):
            stored += [artifact_store.join(ckpt, f) for f in _MODEL_FILES]
        if isinstance(outputs.get("onnx"), str):
            stored.append(outputs["onnx"])
            stored.append(str(Path(outputs["onnx"]).with_suffix(".json")))  # its sidecar (class names, input)
        return [artifact_store.materialize(f) for f in stored if artifact_store.exists(f)]

    def _register(self, step: Step, child: tracking.Run, outputs: dict) -> str | None:
        """The step's model files as a logged model registered as a new version; its ``model_id``."""
        files = self._model_files(outputs)
        if not files:
            return None
        for f in files:
            child.log_artifact(f, "model")
        name = self.wf.model_name
        step_tags = {k: v for k, v in self.step_tags(step).items() if not k.startswith("mlflow.")}
        tags = {**step_tags, "detflow.source_step": step.id, "detflow.upstream": ",".join(step.needs),
                "detflow.formats": ",".join(sorted({f.suffix.lstrip('.') for f in files}))}
        upstream = [v for v in (self._version_of(child, sid) for sid in step.needs) if v]
        if upstream:
            tags["detflow.upstream_version"] = ",".join(f"{name}/{v}" for v in upstream)
        for field in ("teacher", "checkpoint", "init", "repopt_scales"):
            value = getattr(step.with_, field, None)
            if isinstance(value, str):
                tags[f"detflow.{field}"] = value
                version = self._version_of(child, value) if value in {s.id for s in self.wf.steps} else None
                if version:
                    tags[f"detflow.{field}_version"] = f"{name}/{version}"
        data = getattr(step.with_, "data", None)
        if step.uses in ("qat", "ptq"):
            tags["detflow.calibration_set"] = (
                json.dumps(data.model_dump(mode="json")) if hasattr(data, "model_dump")
                else str(data or self.wf.defaults.data or "training set of the checkpoint"))
        from ..predict import pyfunc

        model_type = _model_type(step.uses, files)
        model_id = tracking.log_logged_model(
            child, f"{name}-{step.id}", files, model_type=model_type, tags=step_tags,
            pyfunc={"loader_module": pyfunc.LOADER_MODULE, "model_config": {"backend": pyfunc.backend_for(model_type)}})
        version = child.register_model(name, tags=tags, alias=CANDIDATE_ALIAS, model_id=model_id,
                                       model_tags={"detflow.workflow": self.wf.name})
        child.set_tags({"detflow.registered_model": f"{name}/{version}"})
        self.versions[step.id] = version
        return model_id

    def _version_of(self, run: tracking.Run, step_id: str) -> str | None:
        """The registered version made from step ``step_id``: this run's, else (a cached step) the
        newest one of this workflow from that step."""
        if step_id in self.versions:
            return self.versions[step_id]
        name = self.wf.model_name
        return (run.find_model_version(name, {"detflow.workflow_run_id": self.run_id, "detflow.source_step": step_id})
                or run.find_model_version(name, {"detflow.workflow": self.wf.name, "detflow.source_step": step_id}))

    def _promote(self, child: tracking.Run, result: dict) -> None:
        """Point the rule's alias at the artifact step's version when the rule held; tag what happened."""
        tags = {"detflow.promote.rule": f"{result['alias']}: {result['when']} on {result['artifact']}/{result['backend']}",
                "detflow.promote.held": str(bool(result.get("held"))).lower()}
        if result.get("held"):
            version = self._version_of(child, result["artifact"])
            if version is None:
                tags["detflow.promote.note"] = f"step {result['artifact']!r} registered no version; alias not set"
            else:
                name = self.wf.model_name
                child.set_alias(name, result["alias"], version)
                tags["detflow.promoted"] = f"{name}/{version}@{result['alias']}"
        child.set_tags(tags)


def _model_type(kind: str, files: list[Path]) -> str:
    """The logged model's type: ``engine`` (a TensorRT plan), ``int8`` (a QAT/PTQ step), ``onnx``
    (an ONNX file), else ``checkpoint``."""
    suffixes = {f.suffix for f in files}
    if suffixes & {".engine", ".plan"}:
        return "engine"
    if kind in ("qat", "ptq"):
        return "int8"
    return "onnx" if ".onnx" in suffixes else "checkpoint"


def flatten_params(data: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten_params(value, f"{prefix}{key}."))
    else:
        out[prefix.rstrip(".")] = str(data)[:500]
    return out

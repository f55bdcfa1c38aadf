"""Readable runs: the description, source and grouping tags that fill the MLflow runs table.

- ``mlflow.note.content``: the run's description (shown on the run page and as "Description"),
  e.g. ``train rtmdet_tiny on synth (400 img), 18 epochs, 2 workers``;
- ``mlflow.source.name`` / ``mlflow.source.type``: the **Source** column (``detflow train``,
  ``detflow workflow release``, ``detflow sweep lr-search`` …, type ``JOB``);
- ``detflow.family``, ``detflow.size``, ``detflow.step_kind``, ``detflow.workflow_run_id``,
  ``detflow.sweep``, ``detflow.git_commit``: columns to sort by and to "Group by" in the UI.

Example::

    from detflow import tracking
    text = tracking.train_description("rtmdet_tiny", "synth", 400, epochs=18, workers=2)
    tags = tracking.readable_tags(text, source="detflow train", family="rtmdet", size="tiny")
    run = tracking.Run.create("rtmdet-tiny-0", experiment="demo", tags=tags)
"""
from __future__ import annotations

from typing import Any

__all__ = ["DESCRIPTION_TAG", "SOURCE_NAME_TAG", "SOURCE_TYPE_TAG", "train_description", "step_description",
           "readable_tags"]

DESCRIPTION_TAG = "mlflow.note.content"
SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"
_GROUP_KEYS = ("family", "size", "step_kind", "workflow", "workflow_run_id", "sweep", "git_commit", "kind")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def train_description(model: str, data: str, images: int | None, *, epochs: int, workers: int,
                      prefix: str = "train") -> str:
    """``train rtmdet_tiny on synth (400 img), 18 epochs, 2 workers`` (no image count when unknown)."""
    count = f" ({images} img)" if images else ""
    return f"{prefix} {model} on {data}{count}, {_plural(epochs, 'epoch')}, {_plural(workers, 'worker')}"


def step_description(kind: str, step_id: str, workflow: str, detail: str = "") -> str:
    """``benchmark step 'bench' of workflow release (rtmdet_tiny, onnx)``: a workflow step's run."""
    tail = f" ({detail})" if detail else ""
    return f"{kind} step '{step_id}' of workflow {workflow}{tail}"


def readable_tags(description: str | None = None, *, source: str | None = None, source_type: str = "JOB",
                  **group: Any) -> dict[str, str]:
    """The description, source and ``detflow.<key>`` grouping tags (keys of ``group`` among family,
    size, step_kind, workflow, workflow_run_id, sweep, git_commit, kind; ``None`` values left out)."""
    unknown = sorted(set(group) - set(_GROUP_KEYS))
    if unknown:
        raise TypeError(f"readable_tags: unknown grouping keys {unknown}; expected some of {list(_GROUP_KEYS)}")
    tags = {f"detflow.{k}": str(v) for k, v in group.items() if v is not None and v != ""}
    if description:
        tags[DESCRIPTION_TAG] = description
    if source:
        tags.update({SOURCE_NAME_TAG: source, SOURCE_TYPE_TAG: source_type})
    if "detflow.git_commit" in tags:
        tags["mlflow.source.git.commit"] = tags["detflow.git_commit"]
    return tags

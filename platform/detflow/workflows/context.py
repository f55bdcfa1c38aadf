"""What a step's run function receives besides its parameters: where its outputs are stored, a
node-local scratch directory, upstream outputs, the workflow defaults and its MLflow run (picklable:
it travels to the Ray task, so it carries no secret).

Storage layout: every step keeps its outputs under ``<storage>/<run_id>/<step_id>/`` (``storage`` is
``defaults.storage``: a local or shared path, or an object-store URL; by default
``$DETFLOW_HOME/workflows`` of the driver). A step writes into ``ctx.path`` (scratch on whatever node
runs it); when it returns, the scratch is uploaded there and removed, and its outputs name the
stored copies (see :mod:`detflow.workflows.execute`). Downstream steps read by reference:
``ctx.output`` gives the stored location, ``ctx.local`` a local copy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import artifact_store
from ..errors import UserInputError

__all__ = ["StepContext"]


@dataclass
class StepContext:
    """``inputs`` maps each completed upstream step id to its outputs dict; ``storage`` is this step's
    ``<storage>/<run_id>/<step_id>`` location."""

    run_id: str
    step_id: str
    kind: str
    workflow: str
    storage: str
    defaults: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, dict] = field(default_factory=dict)
    attempt: int = 1
    mlflow_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    scratch: str | None = None

    @property
    def path(self) -> Path:
        """The node-local scratch directory (set by the task; removed when the step ends)."""
        if self.scratch is None:
            raise RuntimeError(f"step {self.step_id!r}: no scratch directory outside its task")
        p = Path(self.scratch)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def resume(self) -> bool:
        """True when an earlier attempt (a retry, or a resumed run) stored files for this step."""
        return any(name != "step.log" for name in artifact_store.list_dir(self.storage))

    @property
    def log_uri(self) -> str:
        return self.uri("step.log")

    def uri(self, *parts: str) -> str:
        """A location under this step's storage (``ctx.uri("runs")``)."""
        return artifact_store.join(self.storage, *parts)

    def local(self, step_id: str, *keys: str) -> Path:
        """A local copy of the first of ``keys`` in ``step_id``'s outputs (downloaded once per process)."""
        return artifact_store.materialize(self.output(step_id, *keys))

    def output(self, step_id: str, *keys: str) -> Any:
        """The first of ``keys`` present in ``step_id``'s outputs (UserInputError if none)."""
        outputs = self.inputs.get(step_id)
        if outputs is None:
            raise UserInputError(f"step {self.step_id!r}: no outputs from {step_id!r} (is it in needs?)")
        for key in keys:
            if outputs.get(key) is not None:
                return outputs[key]
        raise UserInputError(f"step {self.step_id!r}: step {step_id!r} has none of {', '.join(keys)} in its outputs")

    def dataset(self, data: Any) -> dict[str, dict[str, str] | None]:
        """``{"train": {annotations, images} | None, "val": …}`` from a step reference, an inline
        mapping, or (``data`` None) the workflow defaults."""
        data = self.defaults.get("data") if data is None else data
        if data is None:
            return {"train": None, "val": None}
        if isinstance(data, str):
            ds = self.output(data, "dataset")
            images = ds["images_dir"]
            return {"train": {"annotations": ds["train_json"], "images": images},
                    "val": {"annotations": ds["val_json"], "images": images} if ds.get("val_json") else None}
        if hasattr(data, "model_dump"):
            data = data.model_dump(mode="json")
        return {"train": data.get("train"), "val": data.get("val")}

    def apply_env(self) -> None:
        """Fill in the settings this node lacks from ``env`` (the driver's non-secret ones): the node's
        own environment wins, so a URL forwarded without its password never replaces a complete one
        (:func:`detflow.storage.apply_public_env`)."""
        from ..storage import apply_public_env

        apply_public_env(self.env)

"""What a step's run function receives besides its parameters: where to write, upstream outputs,
the workflow defaults and its MLflow run (picklable: it travels to the Ray task)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserInputError

__all__ = ["StepContext"]


@dataclass
class StepContext:
    """``inputs`` maps each completed upstream step id to its outputs dict."""

    run_id: str
    step_id: str
    kind: str
    workflow: str
    workdir: str
    defaults: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, dict] = field(default_factory=dict)
    attempt: int = 1
    mlflow_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    log_path: str | None = None

    @property
    def path(self) -> Path:
        p = Path(self.workdir)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def resume(self) -> bool:
        """True when an earlier attempt (a retry, or a resumed run) left files in the step dir."""
        p = Path(self.workdir)
        return p.is_dir() and any(x.name != "step.log" for x in p.iterdir())

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
        os.environ.update(self.env)

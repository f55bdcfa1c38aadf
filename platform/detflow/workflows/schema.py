"""Workflow YAML schema: a name, shared ``defaults`` and a list of steps, each ``uses`` one kind.

Example (``workflows/quickstart.yaml``, abridged)::

    kind: workflow
    name: quickstart
    defaults: {model: rtmdet_tiny, data: synth, image_size: 320, scaling: {workers: 2}}
    steps:
      - {id: synth, uses: synth, with: {num_images: 200}}
      - {id: train, uses: train, needs: [synth], with: {train: {epochs: 6}}}
      - {id: distill, uses: distill, needs: [train], with: {teacher: train}}
      - {id: qat, uses: qat, needs: [distill], with: {checkpoint: distill}}
      - {id: bench, uses: benchmark, needs: [distill, qat], with: {artifacts: [distill, qat]}}

Upstream outputs are named by step id (``teacher: train``), never by path. ``with`` is typed per
kind: :class:`Step` validates it with the class registered for ``uses`` (a union discriminated by
``uses``, kept in a registry so new kinds — and test fakes — plug in; the built-in kinds are the
table in :mod:`detflow.workflows.builtin`). Relative paths are resolved
against the workflow file's directory when it is loaded (:func:`detflow.workflows.lint.load_workflow`).
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (Field, NonNegativeInt, PositiveInt, SerializeAsAny, ValidationInfo, field_validator,
                      model_validator)

from ..archsearch.config import NasObjective
from ..config.base import StrictModel
from ..config.train import (CheckpointConfig, DatasetSplit, ModelConfig, RecipeConfig, ScalingConfig,
                            TrainLoopConfig)
from ..tune.config import SweepSearch, TrialResources
from .kinds import Ref, StepKind, get_step_kind
from .retry import DEFAULT_JITTER, DEFAULT_MAX_DELAY_S, NEVER_RETRIED, SHORTHANDS

__all__ = [
    "DatasetSpec", "Defaults", "Resources", "StepParams", "Step", "Workflow", "SynthParams", "TrainParams",
    "DistillParams", "QATDistillParams", "QATParams", "PTQParams", "ExportParams", "BenchmarkParams", "EvaluateParams",
    "SweepParams", "NASParams", "DataRef", "PromoteRule",
]

STEP_ID = r"^[A-Za-z][A-Za-z0-9_\-]*$"


class DatasetSpec(StrictModel):
    """A dataset given by path (``train`` for training kinds, ``val`` for evaluation/benchmark)."""

    train: DatasetSplit | None = None
    val: DatasetSplit | None = None


# ``data: synth`` names an upstream ``synth`` step; a mapping gives the paths.
DataRef = Annotated[str | DatasetSpec | None, Ref("dataset")]
CheckpointRef = Annotated[str, Ref("checkpoint")]


class Defaults(StrictModel):
    """Shared by every step unless its ``with`` says otherwise."""

    data: DataRef = None
    model: str | ModelConfig | None = Field(None, description="model name or ModelConfig mapping")
    image_size: PositiveInt | None = None
    recipe: RecipeConfig | None = None
    scaling: ScalingConfig | None = None
    storage: str | None = Field(None, description="where every step stores its outputs, under <storage>/<run_id>/<step_id>/: "
                                "a local or shared path, or s3:// (gs://, hdfs://, abfs://); default $DETFLOW_HOME/workflows")


class Resources(StrictModel):
    """Ray resources of the step task (defaults per kind, see ``StepKind.resources``)."""

    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0)
    memory_gb: float | None = Field(None, gt=0)
    custom: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="Ray custom resources, e.g. {gpu_a100: 1} or a node's own resource to pin the step")


class StepParams(StrictModel):
    """Base of every kind's ``with`` parameters."""


class SynthParams(StepParams):
    """Generate a synthetic COCO dataset (``detflow.data.generate_synthetic``)."""

    num_images: PositiveInt = 200
    seed: int = 0
    image_size: PositiveInt = 320
    num_classes: PositiveInt = 4
    val_fraction: float = Field(0.2, gt=0, lt=1)


class _TrainSections(StepParams):
    """TrainConfig sections a step may set, under TrainConfig's names (``model``, ``recipe``,
    ``train``, ``scaling``, ``checkpoint``), composed over ``config`` / upstream / ``defaults``
    (:func:`detflow.config.compose.compose`: only the values written count). ``data`` names the
    dataset (an upstream step or {train, val} paths) and ``image_size`` sets ``data.image_size``."""

    config: str | None = Field(None, description="base training config YAML (`kind: train`)")
    model: str | ModelConfig | None = Field(None, description="model name or TrainConfig `model:` section")
    data: DataRef = None
    image_size: PositiveInt | None = Field(None, description="data.image_size of the training config")
    recipe: RecipeConfig | None = None
    train: TrainLoopConfig | None = None
    scaling: ScalingConfig | None = None
    checkpoint: CheckpointConfig | None = Field(None, description="TrainConfig `checkpoint:` section")
    init: Annotated[str | None, Ref("checkpoint")] = Field(None, description="start from this step's weights")


class TrainParams(_TrainSections):
    """Train a detector (``detflow.train.run_training``) — a Ray Train job."""

    config_from: Annotated[str | None, Ref("best_config")] = Field(
        None, description="take the best config of an upstream sweep/nas step as the base")
    repopt_scales: Annotated[str | None, Ref("checkpoint")] = Field(
        None, description="RepOpt training (YOLOv6, docs/yolov6-quantization.md): the upstream hyper-search step "
        "whose scales set train.optimizer.repopt_scales (and train.optimizer.name: repopt); the model needs "
        "backbone.block: repopt")


class DistillParams(_TrainSections):
    """Train a student with a teacher's soft targets; the same model as the teacher is
    self-distillation (YOLOv6 §2.4). The student config defaults to the teacher's."""

    teacher: CheckpointRef
    weight: float = Field(1.0, ge=0)
    temperature: float | None = Field(None, gt=0, description="default: the family's (YOLOv6 20, others 1)")
    decay: Literal["cosine", "none"] = "cosine"
    feature: bool = Field(False, description="channel-wise feature distillation (YOLOv6)")


class QATDistillParams(StrictModel):
    """Channel-wise distillation (Shu et al. 2021) of the neck features from the fp32 model during QAT (YOLOv6)."""

    weight: float = Field(10.0, gt=0, description="weight of the CWD term added to the detection loss")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the spatial distributions")


class QATParams(StepParams):
    """Re-parameterise, quantization-aware fine-tune (torchao PT2E), export int8 Q/DQ ONNX."""

    checkpoint: CheckpointRef
    data: DataRef = None
    epochs: PositiveInt = 2
    lr: float = Field(1e-5, gt=0)
    max_steps_per_epoch: PositiveInt | None = None
    skip_layers: list[str] = Field(default_factory=list, description="module names kept in float")
    distill: QATDistillParams | None = Field(None, description="channel-wise distillation from the fp32 model on "
                                             "the neck features ({} for YOLOv6's weight 10, temperature 1); null: none")


class PTQParams(StepParams):
    """Calibration-only post-training quantization to an int8 Q/DQ ONNX model."""

    checkpoint: CheckpointRef
    data: DataRef = Field(None, description="calibration set (its train split)")
    calib_batches: PositiveInt = 4
    keep_float: NonNegativeInt = Field(0, description="partial PTQ (YOLOv6): keep this many of the most "
                                       "quantization-sensitive convs in float (ranked in sensitivity.json); "
                                       "0: plain PTQ")


class ExportParams(StepParams):
    """Export the deploy form to ONNX (fp32), checked against PyTorch in ONNX Runtime."""

    checkpoint: CheckpointRef
    input_size: PositiveInt | None = None
    dynamic_batch: bool = True
    with_nms: bool = False


_BACKENDS = Literal["torch", "torch.compile", "onnxruntime", "onnxruntime-cuda", "tensorrt"]


class PromoteRule(StrictModel):
    """Point ``alias`` at the registered version of ``artifact`` when ``when`` holds on its benchmark
    row on ``backend`` (see :mod:`detflow.workflows.promote`)."""

    alias: str = Field(description="registry alias to set, e.g. champion")
    when: str = Field(description="condition over the row's columns, e.g. 'mAP50 >= 0.70 and p50_ms <= 30'")
    artifact: str = Field(description="the benchmarked step whose registered version gets the alias")
    backend: _BACKENDS = Field(description="the row's backend")
    batch_size: PositiveInt | None = Field(None, description="the row's batch size (default: the smallest)")
    precision: Literal["fp32", "fp16", "int8"] | None = Field(None, description="the row's precision (default: any)")

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", value):
            raise ValueError(f"{value!r}: an alias is letters, digits, _ and -, starting with a letter")
        if value == "candidate":
            raise ValueError("'candidate' is set on every registered version; promote to another alias")
        return value

    @field_validator("when")
    @classmethod
    def _when(cls, value: str) -> str:
        from .promote import parse_condition

        parse_condition(value)
        return value


class BenchmarkParams(StepParams):
    """Latency + mAP matrix over artifacts × backends × batch sizes (``detflow.bench``)."""

    artifacts: Annotated[list[str], Ref("checkpoint", "onnx")] = Field(min_length=1)
    backends: list[Literal["torch", "torch.compile", "onnxruntime", "onnxruntime-cuda", "tensorrt"]] = \
        ["torch", "onnxruntime"]
    precisions: list[Literal["fp32", "fp16", "int8"]] | None = Field(None, description="keep only these cells")
    batch_sizes: list[PositiveInt] = [1]
    input_size: PositiveInt | None = None
    data: DataRef = Field(None, description="val split for the mAP column")
    warmup: NonNegativeInt = 5
    iters: PositiveInt = 20
    threads: PositiveInt = 1
    missing_backend: Literal["fail", "skip"] = "fail"
    max_eval_images: PositiveInt | None = Field(None, description="cap the val images scored per cell")
    promote: PromoteRule | None = Field(None, description="set a registry alias when a rule holds on a row")

    @model_validator(mode="after")
    def _promote_in_matrix(self) -> "BenchmarkParams":
        rule = self.promote
        if rule is None:
            return self
        if rule.artifact not in self.artifacts:
            raise ValueError(f"promote.artifact {rule.artifact!r} is not benchmarked; expected one of "
                             f"{', '.join(self.artifacts)}")
        if rule.backend not in self.backends:
            raise ValueError(f"promote.backend {rule.backend!r} is not benchmarked; expected one of "
                             f"{', '.join(self.backends)}")
        if rule.batch_size is not None and rule.batch_size not in self.batch_sizes:
            raise ValueError(f"promote.batch_size {rule.batch_size} is not benchmarked; expected one of "
                             f"{', '.join(map(str, self.batch_sizes))}")
        return self


class EvaluateParams(StepParams):
    """COCO mAP of a checkpoint or exported model on a dataset."""

    artifact: Annotated[str, Ref("checkpoint", "onnx")]
    data: DataRef = None
    backend: Literal["torch", "onnxruntime"] | None = Field(None, description="default: by artifact type")
    input_size: PositiveInt | None = None


class SweepParams(SweepSearch, _TrainSections):
    """Hyperparameter sweep (``detflow.tune``, Ray Tune + Optuna) over the step's training config: the
    training-config sections plus a sweep YAML's search fields (:class:`~detflow.tune.config.SweepSearch`;
    ``space`` entries are ``{uniform: [a, b]}``, ``{choice: […]}``, … or a fixed value)."""

    trial_resources: TrialResources = Field(TrialResources(), description="one trial's Ray Train job")


class NASParams(NasObjective, _TrainSections):
    """SpineNet architecture search (``detflow.nas``): proxy-train sampled specs, keep the best. The
    training-config sections plus a NAS YAML's search fields (:class:`~detflow.archsearch.config.NasObjective`)."""


class Step(StrictModel):
    """One node of the DAG. ``with`` is validated by the class registered for ``uses``."""

    model_config = {**StrictModel.model_config, "populate_by_name": True}

    id: str = Field(pattern=STEP_ID)
    uses: str
    needs: list[str] = Field(default_factory=list)
    with_: SerializeAsAny[StepParams] = Field(default_factory=StepParams, alias="with")
    retries: NonNegativeInt = 0
    retry_delay_s: float = Field(2.0, ge=0, description="first retry delay; doubles each attempt")
    retry_max_delay_s: float = Field(DEFAULT_MAX_DELAY_S, ge=0, description="cap of the retry delay (after jitter)")
    retry_jitter: float = Field(DEFAULT_JITTER, ge=0, le=1, description="relative random jitter of each retry "
                                "delay: 0.5 waits 50-150 % of it; 0 none")
    # not "retry_on": a mistyped ``retry:`` must keep suggesting ``retries``
    retry_errors: list[str] = Field(default_factory=lambda: ["any"], min_length=1, description=(
        "failures to retry: any, oom, worker_crash, node_lost, infra, or exception class names "
        "(WorkerCrashedError, RayTaskError, TimeoutError, …); UserInputError/ConfigError/DataError never are"))
    resources: Resources = Resources()

    @field_validator("retry_errors")
    @classmethod
    def _retry_kinds(cls, kinds: list[str]) -> list[str]:
        for kind in kinds:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", kind):
                raise ValueError(f"any, {', '.join(SHORTHANDS)} or exception class names (not {kind!r})")
            if kind.rsplit(".", 1)[-1] in NEVER_RETRIED:
                raise ValueError(f"no {kind} (bad input is never retried)")
        return kinds

    @field_validator("uses")
    @classmethod
    def _known_kind(cls, uses: str) -> str:
        get_step_kind(uses)
        return uses

    @field_validator("with_", mode="before")
    @classmethod
    def _typed_params(cls, value: Any, info: ValidationInfo) -> Any:
        uses = info.data.get("uses")
        if uses is None:
            return value
        params_cls = get_step_kind(uses).params
        if isinstance(value, params_cls):
            return value
        if isinstance(value, StepParams):  # the (untyped) default
            value = value.model_dump(exclude_unset=True)
        return params_cls.model_validate(value or {})

    @property
    def kind(self) -> StepKind:
        return get_step_kind(self.uses)

    def ray_resources(self) -> dict[str, float]:
        res = dict(self.kind.resources)
        for key in ("num_cpus", "num_gpus"):
            if getattr(self.resources, key) is not None:
                res[key] = getattr(self.resources, key)
        if self.resources.memory_gb:
            res["memory"] = self.resources.memory_gb * 2**30
        if self.resources.custom:
            res["resources"] = dict(self.resources.custom)
        return res


class Workflow(StrictModel):
    """A validated workflow; build it with :func:`detflow.workflows.lint.load_workflow`."""

    kind: Literal["workflow"] = Field("workflow", description="config kind: a workflow file starts with `kind: workflow`")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    description: str = ""
    registered_model: str | None = Field(None, description="MLflow registry name; default the workflow name")
    defaults: Defaults = Defaults()
    steps: list[Step] = Field(min_length=1)

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    @property
    def model_name(self) -> str:
        return self.registered_model or self.name

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

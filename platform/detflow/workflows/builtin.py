"""The built-in step kinds: one table of imported objects (parameter class, run function, outputs).

Registered into :mod:`detflow.workflows.kinds` when :mod:`detflow.workflows` is imported. The
step modules keep their heavy imports (torch, Ray Train, ONNX Runtime) inside their run functions,
so importing this table stays cheap (``detflow --help``).
"""
from __future__ import annotations

from .kinds import StepKind, register_step_kind
from .schema import (BenchmarkParams, DistillParams, EvaluateParams, ExportParams, NASParams, PTQParams,
                     QATParams, SweepParams, SynthParams, TrainParams)
from .steps import benchmark, evaluate, export, quant, search, synth, train

__all__ = ["BUILTIN_KINDS"]

_TRAIN_RES = {"num_cpus": 0.0}  # a train-like step only drives its Ray Train / Tune job
_CPU = {"num_cpus": 1.0}
_TRAINED = frozenset({"checkpoint", "config", "metrics"})
_QUANT = frozenset({"checkpoint", "onnx", "metrics"})

BUILTIN_KINDS = (
    StepKind("synth", SynthParams, synth.run, frozenset({"dataset"})),
    StepKind("train", TrainParams, train.run_train, _TRAINED, _TRAIN_RES,
             registers_model=True, needs_data=True, needs_model=True),
    StepKind("distill", DistillParams, train.run_distill, _TRAINED, _TRAIN_RES, registers_model=True),
    StepKind("qat", QATParams, quant.run_qat, _QUANT, _CPU, registers_model=True),
    StepKind("ptq", PTQParams, quant.run_ptq, _QUANT, _CPU, registers_model=True),
    StepKind("export", ExportParams, export.run, frozenset({"onnx"}), _CPU, registers_model=True),
    StepKind("benchmark", BenchmarkParams, benchmark.run, frozenset({"table", "metrics"}), _CPU),
    StepKind("evaluate", EvaluateParams, evaluate.run, frozenset({"metrics"}), _CPU),
    StepKind("sweep", SweepParams, search.run_sweep, frozenset({"best_config", "metrics"}),
             _TRAIN_RES, needs_data=True, needs_model=True),
    StepKind("nas", NASParams, search.run_nas, frozenset({"best_config", "spec", "metrics"}),
             _TRAIN_RES, needs_data=True),
)
for _kind in BUILTIN_KINDS:
    register_step_kind(_kind, replace=True)

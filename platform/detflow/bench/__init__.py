"""Benchmarks: the artifact × backend × batch-size matrix with latency and mAP (P3b), data-loading benchmarks (P2a)."""
from .backends import BACKENDS, Artifact, Runner, backend_status, load_artifact, make_runner
from .evaluate import evaluate_artifact, evaluate_runner
from .matrix import BenchArtifact, BenchRow, BenchTable, run_benchmark

__all__ = [
    "run_benchmark", "BenchArtifact", "BenchRow", "BenchTable", "evaluate_artifact", "evaluate_runner",
    "BACKENDS", "Artifact", "Runner", "backend_status", "load_artifact", "make_runner",
]

from .data_bench import format_data_bench, run_data_bench  # noqa: E402  (P2a: `detflow bench data`)

__all__ += ["run_data_bench", "format_data_bench"]

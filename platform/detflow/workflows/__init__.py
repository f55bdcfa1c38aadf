"""Workflows: YAML DAGs of train → distill → QAT → benchmark (and sweep, NAS, export, …) on Ray,
with durable SQL state, caching, retries, resume/cancel and MLflow lineage.

>>> from detflow.workflows import load_workflow, run_workflow
>>> result = run_workflow(load_workflow("workflows/quickstart.yaml"))   # doctest: +SKIP

A workflow file starts with ``kind: workflow``; the built-in step kinds are the table
:data:`detflow.workflows.builtin.BUILTIN_KINDS`, registered here on import.
"""
from .builtin import BUILTIN_KINDS
from .engine import RunResult, cancel_run, new_run_id, resume_workflow, run_workflow
from .kinds import Ref, StepKind, get_step_kind, register_step_kind, step_kinds
from .lint import LintError, lint, load_workflow, parse_workflow
from .schema import Step, StepParams, Workflow
from .state import RunStatus, StateStore, StepStatus

__all__ = [
    "Workflow", "Step", "StepParams", "StepKind", "Ref", "register_step_kind", "get_step_kind", "step_kinds",
    "BUILTIN_KINDS", "load_workflow", "parse_workflow", "lint", "LintError", "run_workflow", "resume_workflow",
    "cancel_run", "new_run_id", "RunResult", "StateStore", "StepStatus", "RunStatus",
]

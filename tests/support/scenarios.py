"""Scenario helpers of a tests/platform module reused by a service test (same scenario, other backend)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

__all__ = ["platform_test_module"]


def platform_test_module(filename: str) -> ModuleType:
    """``tests/platform/FILENAME`` loaded as a module (its scenario helpers take any state URL)."""
    path = Path(__file__).resolve().parents[1] / "platform" / filename
    spec = importlib.util.spec_from_file_location(f"detflow_scenarios_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

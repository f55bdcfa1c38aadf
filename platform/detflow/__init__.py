"""detflow: experiment orchestration for real-time object detectors on Ray, tracked in MLflow.

The Python SDK::

    import detflow
    result = detflow.run("workflows/quickstart.yaml")            # a workflow on local Ray
    detflow.status(result.run_id)                                # its steps, outputs, metrics
    detflow.submit("wf.yaml", address="http://HEAD:8265")        # the driver runs on the cluster
    detflow.sweep(base="train.yaml", space={...}, name="s1")     # Ray Tune + Optuna sweep
    detflow.nas("workflows/nas/spinenet_proxy_nas.yaml")         # SpineNet architecture search
"""
__version__ = "0.1.0"

# Floors of the dependencies whose older versions are unsafe (keep in step with pyproject.toml):
# torch < 2.10 has known ``weights_only`` bypasses; mlflow < 3.5 lacks the allowed-hosts middleware.
DEPENDENCY_FLOORS = {"torch": "2.10", "mlflow": "3.5"}


def check_dependency_versions(version=None, floors=DEPENDENCY_FLOORS) -> None:
    """Raise a one-line ImportError when an installed package is older than its floor. ``version``
    (default ``importlib.metadata.version``) maps a package name to its installed version; a package
    that is not installed is left to fail where it is imported. Imports nothing heavy."""
    import importlib.metadata
    import re

    version = version or importlib.metadata.version

    def release(text: str) -> tuple[int, ...]:
        match = re.match(r"\d+(?:\.\d+)*", str(text).strip().lstrip("vV"))
        parts = [int(n) for n in match.group(0).split(".")] if match else []
        return tuple(parts + [0] * (4 - len(parts)))

    for name, floor in floors.items():
        try:
            installed = version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed is not None and release(installed) < release(floor):
            raise ImportError(f"detflow needs {name}>={floor}, but {name} {installed} is installed; "
                              f"upgrade it: pip install '{name}>={floor}'")


check_dependency_versions()

from . import nas  # noqa: E402  (callable package: detflow.nas(...))
from .sdk import cancel, resume, run, status, submit  # noqa: E402
from .tune.sdk import sweep  # noqa: E402

__all__ = ["__version__", "run", "submit", "status", "resume", "cancel", "sweep", "nas"]

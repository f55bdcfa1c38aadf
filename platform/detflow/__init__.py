"""detflow: experiment orchestration for real-time object detectors on Ray, tracked in MLflow.

The Python SDK (one module, :mod:`detflow.sdk`, re-exported here on first use)::

    import detflow
    result = detflow.run("workflows/quickstart.yaml")            # a workflow on local Ray
    detflow.status(result.run_id)                                # its steps, outputs, metrics
    detflow.submit("wf.yaml", address="http://HEAD:8265")        # the driver runs on the cluster
    detflow.sweep(base="train.yaml", space={...}, name="s1")     # Ray Tune + Optuna sweep
    detflow.nas("workflows/nas/spinenet_proxy_nas.yaml")         # SpineNet architecture search
    detflow.compare(sweep="s1")                                  # its trials side by side
    detflow.validate("train.yaml")                               # ("train", TrainConfig(...))
"""
from .version import __version__  # noqa: E402  (a leaf: lower layers import it from there)

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

# The SDK functions are attributes of this package, loaded on first use so that ``import detflow``
# (and ``detflow --help``) stays cheap; ``detflow.run is detflow.sdk.run``.
SDK_NAMES = ("run", "submit", "status", "resume", "cancel", "logs", "plan", "list_runs", "sweep", "nas", "compare",
             "validate")

__all__ = ["__version__", *SDK_NAMES]


def __getattr__(name: str):
    if name in SDK_NAMES:
        from . import sdk

        value = getattr(sdk, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SDK_NAMES))

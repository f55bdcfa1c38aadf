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

from . import nas  # noqa: E402  (callable package: detflow.nas(...))
from .sdk import cancel, resume, run, status, submit  # noqa: E402
from .tune.sdk import sweep  # noqa: E402

__all__ = ["__version__", "run", "submit", "status", "resume", "cancel", "sweep", "nas"]

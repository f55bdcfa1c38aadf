"""detflow: experiment orchestration for real-time object detectors on Ray, tracked in MLflow.

The public SDK is re-exported here as areas land (``detflow.train``, ``detflow.run``,
``detflow.sweep`` …); see docs/ for the guide.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]

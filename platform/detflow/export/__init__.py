"""ONNX export of the deploy form (fp32), optionally with NMS in the graph. See :func:`export_onnx`."""
from .nms import NMS_OUTPUTS, append_nms
from .onnx import (
    DeployModule, ExportResult, ModelSource, compare_onnx_to_torch, export_onnx, normalize_input_size,
    ort_session, read_sidecar, resolve_model, write_sidecar,
)

__all__ = [
    "export_onnx", "ExportResult", "ModelSource", "DeployModule", "resolve_model", "normalize_input_size",
    "ort_session", "read_sidecar", "write_sidecar", "compare_onnx_to_torch", "append_nms", "NMS_OUTPUTS",
]

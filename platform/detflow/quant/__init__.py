"""Int8 quantisation (torchao PT2E, x86 quantizer) to QDQ ONNX: :func:`run_qat`, :func:`run_ptq`."""
from .common import QuantResult, build_quantizer, count_qdq, resolve_skip_layers
from .ptq import run_ptq
from .qat import run_qat

__all__ = ["run_qat", "run_ptq", "QuantResult", "build_quantizer", "resolve_skip_layers", "count_qdq"]

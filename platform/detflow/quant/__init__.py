"""Int8 quantisation (torchao PT2E, x86 quantizer) to QDQ ONNX: :func:`run_qat` (optionally with channel-wise
distillation, :class:`CWDConfig`), :func:`run_ptq` (optionally partial: ``keep_float``, :func:`layer_sensitivity`)."""
from .common import QuantResult, build_quantizer, count_qdq, resolve_skip_layers
from .distill import CWDConfig
from .ptq import run_ptq
from .qat import run_qat
from .sensitivity import LayerScore, layer_sensitivity, quantizable_convs

__all__ = ["run_qat", "run_ptq", "QuantResult", "build_quantizer", "resolve_skip_layers", "count_qdq", "CWDConfig",
           "LayerScore", "layer_sensitivity", "quantizable_convs"]

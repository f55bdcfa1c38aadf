"""Box operations, NMS, losses and shared post-processing in plain torch."""
from .boxes import *  # noqa: F401,F403
from .boxes import __all__ as _boxes_all
from .losses import *  # noqa: F401,F403
from .losses import __all__ as _losses_all
from .nms import batched_nms, nms
from .postprocess import dense_postprocess, letterbox_scales, multiclass_nms
from .precision import float32_guard, float32_region, to_float32

__all__ = [*_boxes_all, *_losses_all, "nms", "batched_nms", "dense_postprocess", "letterbox_scales",
           "multiclass_nms", "float32_guard", "float32_region", "to_float32"]

"""Label assigners: which priors learn which ground-truth box."""
from .dynamic_soft_label import Assignment, DynamicSoftLabelAssigner, mask_center_of_mass

__all__ = ["Assignment", "DynamicSoftLabelAssigner", "mask_center_of_mass"]
from .atss import ATSSAssigner  # noqa: E402
from .task_aligned import BatchAssignment, TaskAlignedAssigner  # noqa: E402

__all__ += ["TaskAlignedAssigner", "ATSSAssigner", "BatchAssignment"]
from .max_iou import MaxIoUAssigner, MaxIoUAssignment  # noqa: E402

__all__ += ["MaxIoUAssigner", "MaxIoUAssignment"]

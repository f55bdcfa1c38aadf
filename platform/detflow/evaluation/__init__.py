"""COCO evaluation: COCOeval wrapper (bbox/segm), result conversion and precision–recall plots."""
from .coco_eval import METRIC_KEYS, evaluate_coco, load_coco_gt, plot_pr_curves
from .results import detections_to_coco, encode_mask

__all__ = ["evaluate_coco", "detections_to_coco", "encode_mask", "load_coco_gt", "plot_pr_curves",
           "METRIC_KEYS"]

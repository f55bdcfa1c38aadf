"""The model zoo as data: every registered variant's size and cost (measured by `detflow models list`,
copied here so listing builds no model and imports no torch) beside its authors' published COCO AP
and T4 TensorRT latency, each with its source.

Measured columns (``params_m``, ``gflops``, ``deploy_params_m``) are what ``detflow models list``
(and ``--deploy``) prints: 80 classes, training form, GFLOPs = 2 × multiply-accumulates at the
variant's input size; ``tests/platform/test_models_zoo.py`` rebuilds models and checks them.
Published columns come from the authors' repositories (see :data:`SOURCES`; the numbers and the
caveats are in ``/work/shared/reference/architectures.md`` §1, §2.8, §3.5, §4.6, §5.4):
``paper_params_m``/``paper_gflops`` as printed (RTMDet's "FLOPs" are about MACs, YOLOv6's are
2 × MACs of the deployed model), ``box_ap``/``mask_ap`` on :attr:`ZooEntry.coco_split`.

>>> from detflow.zoo import zoo_entries
>>> [e.name for e in zoo_entries("rtmdet")][:2]
['rtmdet_ins_l', 'rtmdet_ins_m']
>>> get_entry("yolov6_n").t4_trt_ms        # 1000 / 779 FPS (batch 1)
1.28
"""
from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["ZooEntry", "SOURCES", "ZOO", "zoo_entries", "get_entry", "zoo_rows"]

# Source key → what it is, and the conditions of its AP and latency numbers.
SOURCES: dict[str, str] = {
    "rtmdet": "RTMDet (arXiv 2212.07784), open-mmlab/mmdetection configs/rtmdet/README.md: COCO val2017; "
              "latency TensorRT 8.4.3, cuDNN 8.2.0, FP16, batch 1, without NMS",
    "yolov6": "YOLOv6 v3.0 (arXiv 2301.05586), meituan/YOLOv6 README (the paper's main table): COCO val2017; "
              "T4 TensorRT 7.2 FP16, batch 1, latency = 1000 / FPS",
    "spinenet": "SpineNet (arXiv 1912.05027), tensorflow/tpu MODEL_ZOO.md: COCO val2017, 500 epochs "
                "(SpineNet-190: 400); latency only on V100/P100 without TensorRT",
    "asff": "ASFF (arXiv 1911.09516), GOATmessi7/ASFF README: COCO test-dev at 608 px; latency only on V100",
    "none": "architecture-search entry (its spec decides the network): no published numbers",
}


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One registered variant.

    Attributes:
        name, family, task, input_size: as in ``detmodels.get_model_entry(name)``.
        params_m: parameters (M), 80 classes, training form (``detflow models list``).
        gflops: 2 × MACs / 1e9 at ``input_size`` (``detflow models list``).
        deploy_params_m: parameters after re-parameterisation (``--deploy``) where the authors count
            the deployed form (YOLOv6); else None.
        paper_params_m, paper_gflops: as the source prints them (None: not published).
        box_ap, mask_ap: COCO AP (%) on ``coco_split`` (None: not published).
        t4_trt_ms: T4 TensorRT FP16 batch-1 latency (ms) where the source reports it.
        source: key of :data:`SOURCES`. note: a caveat.
    """

    name: str
    family: str
    task: str
    input_size: int
    params_m: float
    gflops: float
    source: str
    deploy_params_m: float | None = None
    paper_params_m: float | None = None
    paper_gflops: float | None = None
    box_ap: float | None = None
    mask_ap: float | None = None
    coco_split: str | None = None
    t4_trt_ms: float | None = None
    note: str = ""


def _rtmdet(name: str, task: str, params: float, gflops: float, paper: tuple[float, float], box: float,
            mask: float | None = None, t4: float | None = None) -> ZooEntry:
    note = "instance segmentation: T4 latency not reported (RTX 3090 only)" if task == "segm" else ""
    return ZooEntry(name, "rtmdet", task, 640, params, gflops, "rtmdet", None, paper[0], paper[1], box, mask,
                    "val2017", t4, note)


def _yolov6(name: str, size: int, params: float, gflops: float, deploy: float, paper: tuple[float, float],
            box: float, fps_b1: int) -> ZooEntry:
    return ZooEntry(name, "yolov6", "bbox", size, params, gflops, "yolov6", deploy, paper[0], paper[1], box, None,
                    "val2017", round(1000.0 / fps_b1, 2), f"paper counts the deployed model; {fps_b1} FPS at batch 1")


def _spinenet(name: str, size: int, params: float, gflops: float, paper: tuple[float, float] | None,
              box: float | None, note: str = "") -> ZooEntry:
    p = paper or (None, None)
    return ZooEntry(name, "spinenet", "bbox", size, params, gflops, "spinenet" if paper else "none", None, p[0], p[1],
                    box, None, "val2017" if box is not None else None, None,
                    note or "paper counts 91 classes (TF convention); latency not on T4/TensorRT")


def _asff(name: str, params: float, gflops: float, box: float, note: str) -> ZooEntry:
    return ZooEntry(name, "yolov3_asff", "bbox", 608, params, gflops, "asff", None, None, None, box, None,
                    "test-dev", None, note)


ZOO: tuple[ZooEntry, ...] = (
    _rtmdet("rtmdet_tiny", "bbox", 4.896, 16.07, (4.8, 8.1), 41.1, t4=2.34),
    _rtmdet("rtmdet_s", "bbox", 8.887, 29.52, (8.89, 14.8), 44.6, t4=2.96),
    _rtmdet("rtmdet_m", "bbox", 24.709, 78.13, (24.71, 39.27), 49.4, t4=6.41),
    _rtmdet("rtmdet_l", "bbox", 52.316, 159.80, (52.3, 80.23), 51.5, t4=10.32),
    _rtmdet("rtmdet_x", "bbox", 94.856, 282.38, (94.86, 141.67), 52.8, t4=18.80),
    _rtmdet("rtmdet_ins_tiny", "segm", 5.638, 23.74, (5.6, 11.8), 40.5, 35.4),
    _rtmdet("rtmdet_ins_s", "segm", 10.183, 43.03, (10.18, 21.5), 44.0, 38.7),
    _rtmdet("rtmdet_ins_m", "segm", 27.575, 108.25, (27.58, 54.13), 48.8, 42.1),
    _rtmdet("rtmdet_ins_l", "segm", 57.366, 213.08, (57.37, 106.56), 51.2, 43.7),
    _rtmdet("rtmdet_ins_x", "segm", 102.704, 365.40, (102.7, 182.7), 52.4, 44.6),
    _yolov6("yolov6_n", 640, 5.058, 12.37, 4.647, (4.7, 11.4), 37.5, 779),
    _yolov6("yolov6_s", 640, 20.147, 49.18, 18.537, (18.5, 45.3), 45.0, 339),
    _yolov6("yolov6_m", 640, 37.741, 92.35, 34.856, (34.9, 85.8), 50.0, 175),
    _yolov6("yolov6_l", 640, 59.639, 149.47, 59.608, (59.6, 150.7), 52.8, 98),
    _yolov6("yolov6_n6", 1280, 11.239, 53.92, 10.374, (10.4, 49.8), 44.9, 228),
    _yolov6("yolov6_s6", 1280, 44.797, 214.37, 41.394, (41.4, 198.0), 50.3, 98),
    _yolov6("yolov6_m6", 1280, 85.491, 406.34, 79.640, (79.6, 379.5), 55.2, 47),
    _yolov6("yolov6_l6", 1280, 140.414, 665.83, 140.359, (140.4, 673.4), 57.2, 26),
    _spinenet("spinenet_49s", 640, 11.152, 59.61, (11.9, 33.8), 41.5,
              "paper counts 91 classes; its 11.9 M is reproduced only with 256-d endpoints (ours: 128-d)"),
    _spinenet("spinenet_49", 640, 28.315, 166.67, (28.5, 85.4), 44.3),
    _spinenet("spinenet_96", 1024, 42.747, 520.09, (43.0, 265.4), 48.5),
    _spinenet("spinenet_143", 1280, 66.731, 1031.12, (67.0, 524.0), 50.6),
    _spinenet("spinenet_190", 1280, 163.181, 3732.21, (163.6, 1885.0), 52.0),
    _spinenet("spinenet", 640, 28.315, 166.67, None, None,
              "architecture-search entry; measured with its default spec (SpineNet-49)"),
    _asff("yolov3", 75.554, 162.37, 38.8, "the authors' strong YOLOv3 baseline; no params published"),
    _asff("yolov3_asff", 79.409, 172.98, 40.6, "YOLOv3 + ASFF; no params published"),
    _asff("yolov3_asff_rfb", 86.012, 183.81, 42.4, "ASFF* (+ RFB, DropBlock); no params published"),
)


def zoo_entries(family: str | None = None) -> list[ZooEntry]:
    """Entries sorted by name (as ``detmodels.list_models``), optionally of one family."""
    return sorted((e for e in ZOO if family is None or e.family == family), key=lambda e: e.name)


def get_entry(name: str) -> ZooEntry:
    """The entry of ``name``; ``KeyError`` naming the known ones."""
    for e in ZOO:
        if e.name == name:
            return e
    raise KeyError(f"model {name!r} is not in the zoo table; known: {', '.join(e.name for e in zoo_entries())}")


def zoo_rows(family: str | None = None) -> list[dict[str, Any]]:
    """One JSON-ready dict per entry with ``official_weights`` (whether ``detflow models pull`` can
    fetch them, from :func:`detflow.weights.catalog.has_official_weights`) and ``source_text``."""
    from .weights.catalog import has_official_weights

    return [{**dataclasses.asdict(e), "official_weights": has_official_weights(e.name),
             "source_text": SOURCES[e.source]} for e in zoo_entries(family)]

"""The mmdetection 3.3 side of ``detflow bench … --against mmdet`` (runs INSIDE the mmdet venv).

Imports only mmdet / mmengine / mmcv(-lite) / torch / numpy (and the standard library): never
detflow. Each subcommand prints ONE JSON line on stdout; the protocols are those of
``docs/benchmarks.md`` ("detflow vs mmdetection 3.3"):

* ``data --ann A --images-dir D --image-size 320 --warmup 80 --images 200 [--seed 0]``: the
  RTMDet-tiny config's stage-1 ``train_pipeline`` (CachedMosaic … CachedMixUp, PackDetInputs) with
  every 640-px size scaled to ``--image-size``, over mmdet's ``CocoDataset``, and the "ceiling"
  (LoadImageFromFile + LoadAnnotations + Resize keep_ratio + Pad + PackDetInputs): images/s of wall
  and of CPU time after ``--warmup`` untimed samples, in the order numpy's
  ``default_rng(seed).integers(len(dataset), size=warmup + images)`` draws (the detflow side's).
* ``step --tensors T.npz --steps 20 --warmup 3``: one RTMDet-tiny (80 classes) training step =
  zero_grad, ``model.loss`` + ``parse_losses``, backward, SGD step; median ms. ``T.npz`` holds
  ``images`` (N×3×S×S float32), ``boxes_<i>`` (M×4 xyxy input pixels) and ``labels_<i>`` (M int64).
* ``infer --model rtmdet_tiny|rtmdet_s --tensors T.npz --runs 10``: eval forward to raw head
  outputs (``mode="tensor"``, no NMS) of ``images`` (batch 1), median ms of ``--runs`` after 2
  warm-up calls.

All run with one torch thread (and one OpenCV thread), as a data-loader worker or a 1-CPU trainer.
"""
from __future__ import annotations

import argparse
import copy
import importlib.abc
import importlib.machinery
import json
import os
import statistics
import sys
import time
import types

import numpy as np
import torch

CONFIGS = {"rtmdet_tiny": "rtmdet_tiny_8xb32-300e_coco.py", "rtmdet_s": "rtmdet_s_8xb32-300e_coco.py"}
CONFIG_SIZE = 640  # the input size the RTMDet configs are written for
SIZE_KEYS = ("img_scale", "scale", "crop_size", "size")


# ------------------------------------------------------------------ mmcv.ops stand-in (own code)
def _nms_keep(boxes: torch.Tensor, scores: torch.Tensor, iou_thr: float) -> torch.Tensor:
    """Greedy NMS, kept indices by descending score (pure torch; only predict mode reaches it)."""
    order = scores.argsort(descending=True)
    b = boxes[order]
    lt = torch.max(b[:, None, :2], b[None, :, :2])
    rb = torch.min(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    over = (inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-12)) > iou_thr
    removed = torch.zeros(len(b), dtype=torch.bool)
    keep = []
    for i in range(len(b)):
        if not removed[i]:
            keep.append(i)
            removed |= over[i]
    return order[torch.tensor(keep, dtype=torch.long)]


def _batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False):
    """``mmcv.ops.batched_nms`` call convention: ``(dets N×5, keep)``."""
    cfg = dict(nms_cfg or {})
    if boxes.numel() == 0 or nms_cfg is None:
        scores, keep = scores.sort(descending=True)
        return torch.cat([boxes[keep], scores[:, None]], -1), keep
    offsets = 0 if cfg.get("class_agnostic", class_agnostic) else idxs.to(boxes)[:, None] * (boxes.max() + 1)
    keep = _nms_keep(boxes + offsets, scores, cfg.get("iou_threshold", 0.5))
    if cfg.get("max_num", -1) > 0:
        keep = keep[:cfg["max_num"]]
    return torch.cat([boxes[keep], scores[keep][:, None]], -1), keep


class _OpsStandin(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``mmcv.ops`` for mmcv-lite (no compiled ``mmcv._ext``): ``batched_nms`` in pure torch; any
    other name is a module class that refuses to be built (RTMDet never builds one)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "mmcv.ops" or fullname.startswith("mmcv.ops."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _ops_attr
        return module

    def exec_module(self, module):
        pass


def _ops_attr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    if name == "batched_nms":
        return _batched_nms

    def refuse(self, *args, **kwargs):
        raise NotImplementedError(f"mmcv.ops.{name}: not available with mmcv-lite")
    return type(name, (torch.nn.Module,), {"__init__": refuse})


def _setup() -> None:
    """One thread, the ops stand-in, mmdet's registries."""
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    sys.meta_path.insert(0, _OpsStandin())
    from mmdet.utils import register_all_modules

    register_all_modules()


def _config(model: str):
    import mmdet
    from mmengine.config import Config

    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "rtmdet", CONFIGS[model])
    return Config.fromfile(path)


def _median_ms(fn, warmup: int, runs: int) -> dict:
    for _ in range(warmup):
        fn()
    times, cpu = [], time.process_time()
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(times), "min_ms": min(times),
            "cpu_ms_per_run": 1000.0 * (time.process_time() - cpu) / runs}


# ------------------------------------------------------------------ data
def _rescaled(pipeline: list, image_size: int) -> list:
    """The pipeline with every 640-based size (img_scale, scale, crop_size, size) × image_size/640."""
    factor = image_size / CONFIG_SIZE
    out = []
    for step in copy.deepcopy(pipeline):
        for key in SIZE_KEYS:
            if isinstance(step.get(key), (tuple, list)):
                step[key] = tuple(int(round(v * factor)) for v in step[key])
        out.append(step)
    return out


def _ceiling(image_size: int) -> list:
    return [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True),
            dict(type="Resize", scale=(image_size, image_size), keep_ratio=True),
            dict(type="Pad", size=(image_size, image_size), pad_val=dict(img=(114, 114, 114))),
            dict(type="PackDetInputs")]


def _dataset(ann: str, images_dir: str, pipeline: list):
    from mmdet.registry import DATASETS

    with open(ann) as f:
        classes = tuple(c["name"] for c in sorted(json.load(f)["categories"], key=lambda c: c["id"]))
    return DATASETS.build(dict(type="CocoDataset", ann_file=os.path.abspath(ann), data_root="",
                               data_prefix=dict(img=os.path.abspath(images_dir) + os.sep),
                               metainfo=dict(classes=classes), filter_cfg=dict(filter_empty_gt=True),
                               pipeline=pipeline))


def _time_dataset(ds, order: list, warmup: int) -> tuple[float, float, int]:
    """(images per wall s, images per CPU s, dropped samples) of load + pipeline over ``order[warmup:]``.

    As ``BaseDataset.__getitem__`` does, a sample the pipeline drops (RandomCrop keeping no box
    returns ``None``) is replaced by another index (here the next one, to stay deterministic); the
    time spent on it counts.
    """
    dropped = 0

    def sample(i):
        nonlocal dropped
        while ds.pipeline(ds.get_data_info(i)) is None:
            dropped += 1
            i = (i + 1) % len(ds)
    for i in order[:warmup]:
        sample(i)
    dropped = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for i in order[warmup:]:
        sample(i)
    n = len(order) - warmup
    return n / (time.perf_counter() - wall), n / max(time.process_time() - cpu, 1e-9), dropped


def cmd_data(args) -> dict:
    pipeline = _rescaled(_config("rtmdet_tiny").train_pipeline, args.image_size)
    figures, n_images = {}, 0
    for name, steps in (("cached", pipeline), ("ceiling", _ceiling(args.image_size))):
        ds = _dataset(args.ann, args.images_dir, steps)
        n_images = len(ds)
        order = np.random.default_rng(args.seed).integers(n_images, size=args.warmup + args.images).tolist()
        figures[name] = _time_dataset(ds, order, args.warmup)
    return {"side": "mmdet", "bench": "data", "dataset_images": n_images, "images": args.images,
            "images_per_s": {k: v[0] for k, v in figures.items()},
            "images_per_cpu_s": {k: v[1] for k, v in figures.items()},
            "dropped": {k: v[2] for k, v in figures.items()}}


# ------------------------------------------------------------------ model
def _model(name: str):
    from mmdet.registry import MODELS
    from mmengine.model import revert_sync_batchnorm

    cfg = _config(name)
    cfg.model.backbone.init_cfg = None  # would download ImageNet weights
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return revert_sync_batchnorm(model)


def _samples(tensors, batch: int, size: int) -> list:
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    samples = []
    for i in range(batch):
        sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                                             batch_input_shape=(size, size), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=torch.from_numpy(tensors[f"boxes_{i}"]).float(),
                                           labels=torch.from_numpy(tensors[f"labels_{i}"]).long())
        samples.append(sample)
    return samples


def cmd_step(args) -> dict:
    tensors = np.load(args.tensors)
    images = torch.from_numpy(tensors["images"])
    samples = _samples(tensors, images.shape[0], images.shape[-1])
    model = _model("rtmdet_tiny").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=float(tensors["lr"]), momentum=0.9,
                                weight_decay=float(tensors["weight_decay"]))

    def step():
        optimizer.zero_grad(set_to_none=True)
        total, _log = model.parse_losses(model.loss(images, samples))
        total.backward()
        optimizer.step()
    return {"side": "mmdet", "bench": "step", "batch": images.shape[0], "image_size": images.shape[-1],
            **_median_ms(step, args.warmup, args.steps)}


def cmd_infer(args) -> dict:
    images = torch.from_numpy(np.load(args.tensors)["images"][:1])
    model = _model(args.model).eval()

    @torch.no_grad()
    def forward():
        model(images, mode="tensor")
    return {"side": "mmdet", "bench": "infer", "model": args.model, "image_size": images.shape[-1],
            **_median_ms(forward, 2, args.runs)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    data = sub.add_parser("data")
    data.add_argument("--ann", required=True)
    data.add_argument("--images-dir", required=True)
    data.add_argument("--image-size", type=int, default=320)
    data.add_argument("--warmup", type=int, default=80)
    data.add_argument("--images", type=int, default=200)
    data.add_argument("--seed", type=int, default=0)
    step = sub.add_parser("step")
    step.add_argument("--tensors", required=True)
    step.add_argument("--steps", type=int, default=20)
    step.add_argument("--warmup", type=int, default=3)
    infer = sub.add_parser("infer")
    infer.add_argument("--model", choices=sorted(CONFIGS), default="rtmdet_tiny")
    infer.add_argument("--tensors", required=True)
    infer.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    _setup()
    result = {"data": cmd_data, "step": cmd_step, "infer": cmd_infer}[args.cmd](args)
    result.update(torch=torch.__version__, mmdet=__import__("mmdet").__version__)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

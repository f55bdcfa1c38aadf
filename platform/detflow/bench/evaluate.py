"""mAP of one exact artifact (checkpoint, ONNX graph, int8 graph) on a COCO split, on a given backend.

The val split goes through the same letterbox (``build_val_transforms``) the model was validated
with, the artifact runs on the chosen backend, dense outputs go through class-aware NMS
(``detmodels.dense_postprocess``; graphs with NMS inside are used as they are), boxes go back
to original pixels and :func:`detflow.evaluation.evaluate_coco` scores them. Instance graphs (outputs
``boxes, scores, mask_kernels, mask_feat``: RTMDet-Ins) go through ``detmodels.dense_instance_postprocess``
(the model's own mask step) and are scored for masks too: ``segm_AP``, ``segm_AP50``, … and ``segm``.

>>> evaluate_artifact("out/qat", split, input_size=320, backend="onnxruntime")["AP50"]   # doctest: +SKIP
0.71
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

import detmodels
from detmodels import dense_instance_postprocess, dense_postprocess

from ..errors import DataError
from .backends import Artifact, Runner, load_artifact, make_runner

__all__ = ["evaluate_artifact", "evaluate_runner", "outputs_to_detections", "has_mask_outputs"]

# Mask metrics copied to the top level as ``segm_<key>`` (the full dict is under ``"segm"``).
SEGM_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def outputs_to_detections(
    outputs: Sequence[np.ndarray], runner: Runner, metas: Sequence[dict], input_hw: tuple[int, int],
    *, score_thr: float, nms_iou: float, max_det: int,
) -> list[detmodels.Detections]:
    """Runner outputs of a batch → per-image detections in original pixels (letterbox undone).

    Instance outputs (``boxes, scores, mask_kernels, mask_feat``) give detections with ``masks``.
    """
    sizes = [tuple(m["orig_size"]) for m in metas]
    scales = [float(m.get("scale", 1.0)) for m in metas]
    if not runner.nms_in_graph:
        dense = [torch.from_numpy(np.asarray(o[: len(metas)], dtype=np.float32)) for o in outputs]
        if has_mask_outputs(outputs, runner):
            return dense_instance_postprocess(*dense[:4], input_hw, sizes, score_thr, nms_iou, max_det,
                                              scale_factors=scales)
        return dense_postprocess(dense[0], dense[1], input_hw, sizes, score_thr, nms_iou, max_det,
                                 scale_factors=scales)
    num, boxes, scores, labels = outputs
    dets = []
    for i, (size, scale) in enumerate(zip(sizes, scales)):
        k = int(num[i])
        keep = scores[i, :k] > score_thr
        b = torch.from_numpy(boxes[i, :k][keep].astype(np.float32)) / scale
        b[:, 0::2] = b[:, 0::2].clamp(0, size[1])
        b[:, 1::2] = b[:, 1::2].clamp(0, size[0])
        dets.append(detmodels.Detections(b, torch.from_numpy(scores[i, :k][keep].astype(np.float32)),
                                         torch.from_numpy(labels[i, :k][keep].astype(np.int64))))
    return dets


def has_mask_outputs(outputs: Sequence[np.ndarray], runner: Runner) -> bool:
    """Whether dense runner outputs carry instance masks (``N×A×4, N×A×C, N×A×K, N×P×h×w``)."""
    return (not runner.nms_in_graph and len(outputs) >= 4 and np.ndim(outputs[2]) == 3
            and np.ndim(outputs[3]) == 4)


def _as_split(split: Any) -> Any:
    """A ``DatasetSplit`` from a split object or a ``{"annotations", "images"}`` dict (workflow YAML)."""
    if isinstance(split, dict):
        from ..config.train import DatasetSplit

        if not {"annotations", "images"} <= set(split):
            raise DataError(f"evaluate: split: expected keys annotations and images, got {sorted(split)}")
        return DatasetSplit(annotations=str(split["annotations"]), images=str(split["images"]))
    return split


def _val_loader(split: Any, art: Artifact, input_size: tuple[int, int], batch_size: int):
    from ..data import CocoDataset, build_dataloader, build_val_transforms

    if input_size[0] != input_size[1]:
        raise DataError(f"evaluate: input_size: expected a square size for the letterbox pipeline, got {input_size}")
    transforms = build_val_transforms(input_size[0], art.input_spec)
    dataset = CocoDataset(split.annotations, split.images, transforms=transforms)
    return dataset, build_dataloader(dataset, batch_size, shuffle=False, num_workers=0)


def _pad_batch(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Pad the last, short batch with zero images so fixed-shape backends see one shape."""
    if images.shape[0] >= batch_size:
        return images
    pad = images.new_zeros((batch_size - images.shape[0], *images.shape[1:]))
    return torch.cat([images, pad])


def evaluate_runner(
    runner: Runner, art: Artifact, split: Any, *, input_size: tuple[int, int], batch_size: int = 8,
    score_thr: float = 0.001, nms_iou: float = 0.65, max_det: int = 100, max_images: int | None = None,
    plot_confusion: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """COCO metrics of ``runner`` over ``split`` (keys of ``evaluate_coco`` plus images, eval_time_s);
    ``plot_confusion``: also write the detection confusion matrix there (PNG)."""
    from ..evaluation import detections_to_coco, evaluate_coco

    t0 = time.perf_counter()
    split = _as_split(split)
    dataset, loader = _val_loader(split, art, input_size, batch_size)
    category_ids = list(dataset.category_ids)
    known = art.info.get("category_ids")
    if known and list(known) != category_ids:
        raise DataError(f"{split.annotations}: category ids {category_ids} differ from the artifact's {list(known)}")
    results, seen, masks = [], 0, False
    for images, _, metas in loader:
        if max_images is not None and seen >= max_images:
            break
        outputs = runner(_pad_batch(images, batch_size))
        hw = (int(images.shape[-2]), int(images.shape[-1]))
        dets = outputs_to_detections(outputs, runner, metas, hw, score_thr=score_thr, nms_iou=nms_iou, max_det=max_det)
        masks = masks or has_mask_outputs(outputs, runner)
        results += detections_to_coco(dets, [int(m["image_id"]) for m in metas], category_ids)
        seen += len(metas)
    metrics = evaluate_coco(dataset.coco, results)
    if masks:
        segm = evaluate_coco(dataset.coco, results, iou_type="segm")
        metrics["segm"] = segm
        metrics.update({f"segm_{k}": v for k, v in segm.items() if k in SEGM_KEYS})
    if plot_confusion is not None:
        from ..evaluation.confusion import write_confusion_plot

        write_confusion_plot(dataset.coco.dataset, results, category_ids, plot_confusion)
    metrics.update(images=seen, eval_time_s=time.perf_counter() - t0, backend=runner.backend,
                   precision=runner.precision)
    return metrics


def evaluate_artifact(
    path: Any,
    split: Any,
    *,
    input_size: int | Sequence[int] | None = None,
    backend: str = "torch",
    batch_size: int = 8,
    threads: int = 1,
    score_thr: float = 0.001,
    nms_iou: float = 0.65,
    max_det: int = 100,
    max_images: int | None = None,
    work_dir: str | os.PathLike | None = None,
    plot_confusion: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """mAP of the artifact at ``path`` on ``split`` (a ``DatasetSplit``: annotations + images) with ``backend``.

    Args:
        path: checkpoint dir, quantisation output dir, export dir / ``.onnx`` file, or a model object.
        input_size: letterbox size; default the artifact's export size or its config's ``data.image_size``.
        plot_confusion: also write the detection confusion matrix (PNG) to this file.
    Returns:
        ``evaluate_coco`` keys (AP, AP50, …, per_class, note) plus images, eval_time_s, backend, precision;
        for instance artifacts also ``segm`` (the mask ``evaluate_coco`` dict) and ``segm_AP``, ``segm_AP50``, ….
    """
    art = load_artifact(path)
    size = resolve_input_size(art, input_size)
    runner = make_runner(art, backend, input_size=size, threads=threads, max_batch=batch_size, work_dir=work_dir)
    return evaluate_runner(runner, art, split, input_size=size, batch_size=batch_size, score_thr=score_thr,
                           nms_iou=nms_iou, max_det=max_det, max_images=max_images, plot_confusion=plot_confusion)


def resolve_input_size(art: Artifact, input_size: int | Sequence[int] | None) -> tuple[int, int]:
    """Requested size, else the artifact's export size, else its checkpoint config's ``data.image_size``."""
    if input_size is not None:
        return (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    if art.input_size:
        return art.input_size
    if art.kind == "checkpoint" and art.path and (Path(art.path) / "config.yaml").is_file():
        import yaml

        cfg = yaml.safe_load((Path(art.path) / "config.yaml").read_text()) or {}
        size = (cfg.get("data") or {}).get("image_size")
        if size:
            return (int(size), int(size))
    from ..errors import UserInputError

    raise UserInputError(f"artifact {art.name!r}: input_size is required (no export size or config image_size known)")

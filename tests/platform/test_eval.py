"""COCO evaluation: ground truth fed back scores AP 1, perturbed boxes score less, empty is 0."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from detflow.errors import UserInputError
from detflow.evaluation import detections_to_coco, evaluate_coco
from detmodels import Detections

H = W = 128
# (image_id, category_id, x, y, w, h): small (<32²) and medium objects, two classes.
OBJECTS = [(1, 1, 10, 10, 20, 20), (1, 2, 50, 40, 40, 50), (2, 1, 5, 60, 30, 30), (2, 2, 70, 8, 24, 16),
           (2, 1, 90, 90, 30, 30)]


def _tiny_coco(path):
    """Write a 2-image, 2-class COCO file with rectangle polygons; return its path."""
    anns = []
    for i, (img, cat, x, y, w, h) in enumerate(OBJECTS, start=1):
        poly = [x, y, x + w, y, x + w, y + h, x, y + h]
        anns.append({"id": i, "image_id": img, "category_id": cat, "bbox": [x, y, w, h], "area": w * h,
                     "iscrowd": 0, "segmentation": [poly]})
    data = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in (1, 2)],
            "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "box"}], "annotations": anns}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def gt_file(tmp_path):
    return _tiny_coco(tmp_path / "gt.json")


def _gt_results(with_masks: bool, shift: float = 0.0) -> list[dict]:
    out = []
    for img, cat, x, y, w, h in OBJECTS:
        r = {"image_id": img, "category_id": cat, "bbox": [x + shift, y + shift, w, h], "score": 1.0}
        if with_masks:
            rle = mask_util.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], H, W)[0]
            r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        out.append(r)
    return out


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_as_predictions_gives_ap_one(gt_file, iou_type):
    m = evaluate_coco(gt_file, _gt_results(with_masks=True), iou_type=iou_type)
    assert m["AP"] == pytest.approx(1.0)
    assert m["AP50"] == pytest.approx(1.0) and m["AR100"] == pytest.approx(1.0)
    assert m["APl"] == -1.0  # no large objects: undefined, COCO convention
    assert set(m["per_class"]) == {"square", "box"}
    assert all(v == pytest.approx(1.0) for v in m["per_class"].values())
    assert m["note"] == ""


def test_perturbed_boxes_score_below_one(gt_file, tmp_path):
    # A 4 px shift of a 20×20 box: IoU = 16·16 / (2·400 − 256) ≈ 0.47 -> misses at every threshold.
    m = evaluate_coco(gt_file, _gt_results(False, shift=4.0), plot_pr=tmp_path / "pr.png")
    assert 0.0 < m["AP"] < 1.0
    assert m["per_class"]["square"] < m["per_class"]["box"]  # smaller boxes suffer more from a shift
    assert (tmp_path / "pr.png").stat().st_size > 1000


def test_empty_predictions_give_zero_with_note(gt_file, tmp_path):
    pred = tmp_path / "pred.json"
    pred.write_text("[]")
    m = evaluate_coco(str(gt_file), pred)
    assert m["AP"] == 0.0 and m["AR100"] == 0.0 and m["num_predictions"] == 0
    assert m["note"] == "no predictions"
    assert m["per_class"] == {"square": 0.0, "box": 0.0}


def test_detections_to_coco_round_trip(gt_file):
    """Detections built from the ground truth (labels contiguous, masks at image size) score AP 1."""
    category_ids = [1, 2]
    dets = []
    for img in (1, 2):
        objs = [o for o in OBJECTS if o[0] == img]
        boxes = torch.tensor([[x, y, x + w, y + h] for _, _, x, y, w, h in objs], dtype=torch.float32)
        masks = torch.zeros(len(objs), H, W, dtype=torch.bool)
        for k, (_, _, x, y, w, h) in enumerate(objs):
            masks[k, y:y + h, x:x + w] = True
        labels = torch.tensor([category_ids.index(c) for _, c, *_ in objs])
        dets.append(Detections(boxes, torch.ones(len(objs)), labels, masks))
    results = detections_to_coco(dets, [1, 2], category_ids)
    assert results[1]["bbox"] == [50.0, 40.0, 40.0, 50.0] and results[1]["category_id"] == 2
    assert isinstance(results[0]["segmentation"]["counts"], str)
    json.dumps(results)  # JSON-serialisable
    assert evaluate_coco(gt_file, results, "bbox")["AP"] == pytest.approx(1.0)
    # Pixel masks cover [x, x+w) while polygons rasterise slightly differently; IoU stays > 0.9.
    assert evaluate_coco(gt_file, results, "segm")["AP50"] == pytest.approx(1.0)


def test_bad_inputs_are_user_errors(gt_file, tmp_path):
    with pytest.raises(UserInputError, match="image_id 99 is not in the ground truth"):
        evaluate_coco(gt_file, [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(UserInputError, match="missing segmentation"):
        evaluate_coco(gt_file, _gt_results(False), iou_type="segm")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserInputError, match="invalid JSON"):
        evaluate_coco(gt_file, bad)
    with pytest.raises(UserInputError, match="iou_type"):
        evaluate_coco(gt_file, [], iou_type="keypoints")


@pytest.mark.parametrize("field, value, match", [
    ("bbox", [1, 2], r"prediction 3: bbox \[1, 2\] is not \[x, y, w, h\] \(4 numbers\)"),
    ("bbox", "0 0 4 4", r"prediction 3: bbox '0 0 4 4' is not \[x, y, w, h\]"),
    ("score", None, "prediction 3: score None is not a number"),
])
def test_malformed_prediction_names_index_and_field(gt_file, field, value, match):
    preds = _gt_results(False)
    preds[3][field] = value
    with pytest.raises(UserInputError, match=match) as info:
        evaluate_coco(gt_file, preds)
    assert str(info.value).startswith("predictions: ") and "\n" not in str(info.value)


def test_cli_eval_names_the_bad_prediction(gt_file, tmp_path, capsys):
    from detflow.cli import main

    preds = _gt_results(False)
    preds[3]["bbox"] = [1.5, 2.5]
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(preds))
    assert main(["eval", "--gt", str(gt_file), "--pred", str(pred)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {pred}: prediction 3: bbox [1.5, 2.5] is not [x, y, w, h] (4 numbers)"


def test_segm_ignores_a_malformed_bbox(gt_file):
    preds = _gt_results(True)
    preds[0]["bbox"] = [1, 2]  # dropped before COCOeval for segm, so not an error
    assert evaluate_coco(gt_file, preds, "segm")["AP"] == pytest.approx(1.0)

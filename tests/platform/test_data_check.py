"""check_coco: every error class on small hand-made files, warnings, offender lists, DataError."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from PIL import Image

from detflow.data import check_coco
from detflow.errors import DataError


def _valid() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 24},
                   {"id": 2, "file_name": "b.jpg", "width": 32, "height": 24}],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "area": 80, "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},
            {"id": 11, "image_id": 2, "category_id": 2, "bbox": [0, 0, 32, 24], "area": 768, "iscrowd": 1,
             "segmentation": {"size": [24, 32], "counts": "abc"}},
        ],
    }


@pytest.fixture
def write(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(images / name)

    def _write(data, raw: str | None = None):
        path = tmp_path / "ann.json"
        path.write_text(raw if raw is not None else json.dumps(data))
        return path, images
    return _write


def test_valid_file_is_ok(write):
    report = check_coco(*write(_valid()))
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.counts == {"images": 2, "annotations": 2, "categories": 2, "crowd": 1}
    report.raise_if_errors()
    assert "ok" in report.summary() and report.to_dict()["ok"] is True


def _mutate(fn):
    data = copy.deepcopy(_valid())
    fn(data)
    return data


def _ann(data):
    return data["annotations"][0]


CASES = {
    "box_outside": (lambda d: _ann(d).update(bbox=[20, 3, 20, 8]), "boxes outside the image (annotation ids 10)"),
    "box_negative_origin": (lambda d: _ann(d).update(bbox=[-5, 3, 4, 4]), "outside the image"),
    "box_zero_width": (lambda d: _ann(d).update(bbox=[2, 3, 0, 8]), "non-positive width or height (annotation ids 10)"),
    "box_malformed": (lambda d: _ann(d).update(bbox=[2, 3, 4]), "malformed bbox"),
    "unknown_category": (lambda d: _ann(d).update(category_id=99), "unknown category_id (annotation ids 10)"),
    "unknown_image": (lambda d: _ann(d).update(image_id=42), "unknown image_id (annotation ids 10)"),
    "duplicate_image_ids": (lambda d: d["images"][1].update(id=1), "duplicate image ids (ids 1)"),
    "duplicate_annotation_ids": (lambda d: d["annotations"][1].update(id=10), "duplicate annotation ids (ids 10)"),
    "duplicate_category_ids": (lambda d: d["categories"][1].update(id=1), "duplicate category ids (ids 1)"),
    "odd_polygon": (lambda d: _ann(d).update(segmentation=[[2, 3, 12, 3, 12, 11, 2]]), "odd number of coordinates"),
    "short_polygon": (lambda d: _ann(d).update(segmentation=[[2, 3, 12, 3]]),
                      "fewer than 3 points (annotation ids 10)"),
    "bad_rle_size": (lambda d: d["annotations"][1]["segmentation"].update(size=[10, 10]), "RLE segmentations"),
    "missing_image_file": (lambda d: d["images"][0].update(file_name="nope.jpg"), "image files missing"),
    "size_mismatch": (lambda d: d["images"][0].update(width=64), "differs from width/height (image ids 1)"),
    "malformed_image": (lambda d: d["images"][0].pop("file_name"), "malformed image records"),
    "malformed_annotation": (lambda d: _ann(d).update(image_id="1"), "malformed annotation records"),
    "no_categories": (lambda d: d.update(categories=[]), "no categories"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_error_class(write, case):
    mutate, expected = CASES[case]
    path, images = write(_mutate(mutate))
    report = check_coco(path, images)
    assert not report.ok
    assert any(expected in e for e in report.errors), report.errors
    with pytest.raises(DataError) as info:
        report.raise_if_errors()
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_undecodable_image(write):
    path, images = write(_valid())
    (images / "b.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    report = check_coco(path, images)
    assert report.errors == ["1 undecodable image files (image ids 2)"]
    assert report.counts["undecodable_images"] == 1


@pytest.mark.parametrize("raw, expected", [
    ("{not json", "not valid JSON"),
    ("[1, 2, 3]", "not a COCO file: expected a JSON object, got list"),
    ('{"images": [], "categories": []}', "not a COCO file: expected lists 'annotations'"),
])
def test_not_coco(write, raw, expected):
    report = check_coco(*write(None, raw=raw))
    assert len(report.errors) == 1 and expected in report.errors[0]


def test_missing_annotation_file(tmp_path):
    report = check_coco(tmp_path / "none.json", tmp_path)
    assert report.errors == ["annotation file not found"]


def test_image_without_annotations_is_a_warning(write):
    data = _valid()
    data["annotations"].pop(1)
    report = check_coco(*write(data))
    assert report.ok
    assert report.warnings == ["1 images without annotations (image ids 2)"]


def test_first_offenders_listed_by_id(write):
    data = _valid()
    data["annotations"] = [
        {"id": 100 + k, "image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 3], "iscrowd": 0} for k in range(7)
    ] + [{"id": 5, "image_id": 2, "category_id": 1, "bbox": [0, 0, 3, 3], "iscrowd": 0}]
    report = check_coco(*write(data))
    assert report.errors == ["7 boxes with non-positive width or height (annotation ids 100, 101, 102, 103, 104, …)"]
    assert report.counts["non_positive"] == 7


def test_synthetic_dataset_passes(tmp_path):
    from detflow.data import generate_synthetic

    paths = generate_synthetic(tmp_path, num_images=3, image_size=64, val_fraction=0)
    report = check_coco(paths.train_json, paths.images_dir)
    assert report.ok, report.errors

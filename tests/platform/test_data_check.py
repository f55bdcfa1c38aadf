"""check_coco: every error class on small hand-made files, warnings, offender lists, DataError."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from PIL import Image

from detflow.data import check_coco
from detflow.errors import DataError

PIL_LIMIT = 178_956_970  # Pillow's default Image.MAX_IMAGE_PIXELS


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


CASES = {  # each finding names the record and the bad value
    "box_outside": (lambda d: _ann(d).update(bbox=[20, 3, 20, 8]),
                    "1 boxes outside the image: annotation 10: bbox [20, 3, 20, 8] is outside the 32x24 image 1"),
    "box_negative_origin": (lambda d: _ann(d).update(bbox=[-5, 3, 4, 4]),
                            "annotation 10: bbox [-5, 3, 4, 4] is outside"),
    "box_zero_width": (lambda d: _ann(d).update(bbox=[2, 3, 0, 8]),
                       "non-positive width or height: annotation 10: bbox [2, 3, 0, 8]"),
    "box_malformed": (lambda d: _ann(d).update(bbox=[2, 3, 4]), "annotation 10: bbox [2, 3, 4] is not [x, y, w, h]"),
    "box_nan": (lambda d: _ann(d).update(bbox=[float("nan"), 3, 10, 8]),
                "NaN or infinite coordinates: annotation 10: bbox [nan, 3, 10, 8] has a non-finite coordinate"),
    "box_inf": (lambda d: _ann(d).update(bbox=[2, 3, float("inf"), 8]),
                "annotation 10: bbox [2, 3, inf, 8] has a non-finite"),
    "polygon_nan": (lambda d: _ann(d).update(segmentation=[[2, 3, 12, 3, 12, float("-inf"), 2, 11]]),
                    "annotation 10: segmentation polygon 0 has a non-finite coordinate (-inf)"),
    "unknown_category": (lambda d: _ann(d).update(category_id=99),
                         "annotation 10: category_id 99 is not a category (known: 1, 2)"),
    "unknown_image": (lambda d: _ann(d).update(image_id=424242), "annotation 10: image_id 424242 has no image"),
    "duplicate_image_ids": (lambda d: d["images"][1].update(id=1),
                            "duplicate image ids: image 1: id used by 2 records"),
    "duplicate_annotation_ids": (lambda d: d["annotations"][1].update(id=10),
                                 "duplicate annotation ids: annotation 10"),
    "duplicate_category_ids": (lambda d: d["categories"][1].update(id=1), "duplicate category ids: category 1"),
    "duplicate_file_names": (lambda d: d["images"][1].update(file_name="a.jpg"),
                             "duplicate file names: images 1, 2: file_name 'a.jpg' is shared"),
    "zero_width_image": (lambda d: d["images"][0].update(width=0), "image 1: width x height 0x24 is not positive"),
    "negative_height_image": (lambda d: d["images"][1].update(height=-3),
                              "image 2: width x height 32x-3 is not positive"),
    "absolute_file_name": (lambda d: d["images"][0].update(file_name="/etc/passwd"),
                           "image 1: file_name '/etc/passwd' is absolute"),
    "dotdot_file_name": (lambda d: d["images"][0].update(file_name="../images/a.jpg"),
                         "image 1: file_name '../images/a.jpg' contains '..'"),
    "odd_polygon": (lambda d: _ann(d).update(segmentation=[[2, 3, 12, 3, 12, 11, 2]]),
                    "annotation 10: segmentation polygon 0 has an odd number of coordinates (7)"),
    "short_polygon": (lambda d: _ann(d).update(segmentation=[[2, 3, 12, 3]]),
                      "fewer than 3 points: annotation 10: segmentation polygon 0 has 2 points"),
    "bad_rle_size": (lambda d: d["annotations"][1]["segmentation"].update(size=[10, 10]),
                     "annotation 11: RLE size [10, 10] is not the image's [24, 32]"),
    "missing_image_file": (lambda d: d["images"][0].update(file_name="nope.jpg"),
                           "image 1: file 'nope.jpg' not found under"),
    "size_mismatch": (lambda d: d["images"][0].update(width=64),
                      "image 1: file 'a.jpg' is 32x24, the record says 64x24"),
    "malformed_image": (lambda d: d["images"][0].pop("file_name"), "malformed image records, need id, file_name, "
                        "width, height: image #0: missing file_name"),
    "malformed_annotation": (lambda d: _ann(d).update(image_id="1"), "annotation #0: image_id '1' is not int"),
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


def test_undecodable_image_names_file_and_reason(write):
    path, images = write(_valid())
    (images / "b.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    report = check_coco(path, images)
    assert len(report.errors) == 1 and "\n" not in report.errors[0]
    assert report.errors[0].startswith("1 undecodable image files: image 2: 'b.jpg' cannot be decoded (cannot identify")
    assert report.counts["undecodable_images"] == 1


def test_missing_file_names_the_images_dir_as_given(write, tmp_path, monkeypatch):
    path, _ = write(_mutate(lambda d: d["images"][0].update(file_name="nope.jpg")))
    monkeypatch.chdir(tmp_path)
    report = check_coco(path, "images")
    assert report.errors == ["1 image files missing: image 1: file 'nope.jpg' not found under images/"]


def test_unknown_category_lists_at_most_ten_known_ids(write):
    data = _valid()
    data["categories"] = [{"id": i, "name": f"c{i}"} for i in range(1, 13)]
    _ann(data)["category_id"] = 999
    report = check_coco(*write(data))
    assert report.errors == ["1 annotations with an unknown category_id: annotation 10: category_id 999 is not a "
                             "category (known: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, …)"]


def test_unsafe_file_names_are_not_opened(write, tmp_path):
    (tmp_path / "outside.jpg").write_bytes((tmp_path / "images" / "a.jpg").read_bytes())
    path, images = write(_mutate(lambda d: d["images"][0].update(file_name="../outside.jpg")))
    report = check_coco(path, images)
    assert report.errors == ["1 images with a file_name outside the images directory: image 1: file_name "
                             "'../outside.jpg' contains '..', need a path inside the images directory"]


def test_max_pixels_from_the_record(write):
    path, images = write(_valid())
    report = check_coco(path, images, max_pixels=700)  # 32x24 = 768
    assert report.errors == ["2 images above the pixel limit: image 1: width x height 32x24 = 768 pixels, above the "
                             "limit of 700 (--max-pixels); image 2: width x height 32x24 = 768 pixels, above the "
                             "limit of 700 (--max-pixels)"]
    assert check_coco(path, images, max_pixels=768).ok


def test_max_pixels_from_the_file_header(write):
    """A record that understates the size: the file's header is checked before it is decoded."""
    data = _valid()
    del data["images"][1], data["annotations"][1]
    data["images"][0].update(width=20, height=20)
    path, images = write(data)
    report = check_coco(path, images, max_pixels=700)
    assert report.errors == ["1 images above the pixel limit: image 1: file 'a.jpg' has 32x24 = 768 pixels, above the "
                             "limit of 700 (--max-pixels)"]


def test_default_max_pixels_is_pillows_bomb_limit(write):
    big = 20_000 * 10_000
    assert big > PIL_LIMIT > 32 * 24
    path, images = write(_mutate(lambda d: d["images"][0].update(width=20_000, height=10_000)))
    report = check_coco(path, images)  # the record alone is refused: the file is not opened
    assert report.errors == [f"1 images above the pixel limit: image 1: width x height 20000x10000 = {big} pixels, "
                             f"above the limit of {PIL_LIMIT} (--max-pixels)"]


def test_decompression_bomb_is_reported_not_raised(write, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32x24 = 768 > 2x: Pillow raises DecompressionBombError
    path, images = write(_valid())
    report = check_coco(path, images)
    assert report.counts["decompression_bombs"] == 2
    assert report.errors[0].startswith("2 decompression bombs: image 1: file 'a.jpg' is a decompression bomb (Image "
                                       "size (768 pixels) exceeds limit of 200 pixels")


def test_cli_max_pixels_option(write, capsys):
    from detflow.cli import main

    path, images = write(_valid())
    assert main(["data", "check", str(path), "--images", str(images), "--max-pixels", "700", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["too_many_pixels"] == 2 and "above the limit of 700" in report["errors"][0]
    assert main(["data", "check", str(path), "--images", str(images), "--max-pixels", "768"]) == 0


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
    assert report.warnings == ["1 images without annotations: image 2"]


def test_first_findings_listed(write):
    data = _valid()
    data["annotations"] = [
        {"id": 100 + k, "image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 3], "iscrowd": 0} for k in range(7)
    ] + [{"id": 5, "image_id": 2, "category_id": 1, "bbox": [0, 0, 3, 3], "iscrowd": 0}]
    report = check_coco(*write(data))
    assert report.errors == ["7 boxes with non-positive width or height: " + "; ".join(
        f"annotation {i}: bbox [0, 0, -1, 3] has a non-positive width or height" for i in range(100, 105)) + "; …"]
    assert report.counts["non_positive"] == 7


def test_synthetic_dataset_passes(tmp_path):
    from detflow.data import generate_synthetic

    paths = generate_synthetic(tmp_path, num_images=3, image_size=64, val_fraction=0)
    report = check_coco(paths.train_json, paths.images_dir)
    assert report.ok, report.errors

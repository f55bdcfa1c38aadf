"""Synthetic COCO generator: determinism, annotation validity through pycocotools, dataset properties."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from detflow.data.synth import SHAPES, _annotations, generate_synthetic, mask_to_polygons, render_image
from detflow.errors import UserInputError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return generate_synthetic(out, num_images=10, seed=3, image_size=128, num_classes=4, val_fraction=0.2)


def _coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    kwargs = dict(num_images=4, image_size=96, num_classes=3)
    generate_synthetic(tmp_path / "a", seed=7, **kwargs)
    generate_synthetic(tmp_path / "b", seed=7, **kwargs)
    generate_synthetic(tmp_path / "c", seed=8, **kwargs)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert a["train.json"] != c["train.json"]
    assert all(a[k] != c[k] for k in a if k.endswith(".jpg"))


def test_split_and_layout(synth):
    train, val = json.loads(synth.train_json.read_text()), json.loads(synth.val_json.read_text())
    assert len(train["images"]) == 8 and len(val["images"]) == 2
    ids = {i["id"] for i in train["images"]} | {i["id"] for i in val["images"]}
    assert ids == set(range(1, 11))
    assert [c["name"] for c in train["categories"]] == [s.name for s in SHAPES[:4]]
    for img in train["images"] + val["images"]:
        assert (synth.images_dir / img["file_name"]).is_file()
        assert (img["width"], img["height"]) == (128, 128)
    ann_ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))


def test_annotations_valid_through_pycocotools(synth):
    coco = _coco(synth.train_json)
    assert len(coco.getAnnIds()) > 10
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert ann["iscrowd"] == 0 and ann["category_id"] in (1, 2, 3, 4)
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
        for poly in ann["segmentation"]:
            assert len(poly) % 2 == 0 and len(poly) >= 6
        mask = coco.annToMask(ann)
        # area and box are exactly those of the polygons as pycocotools rasterises them
        assert int(mask.sum()) == ann["area"], ann["id"]
        ys, xs = np.nonzero(mask)
        assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == ann["bbox"], ann["id"]
    # ground truth fed back as results loads through loadRes
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in coco.loadAnns(coco.getAnnIds())]
    with contextlib.redirect_stdout(io.StringIO()):
        res = coco.loadRes(results)
    assert len(res.getAnnIds()) == len(results)


def test_visible_regions_do_not_overlap(synth):
    """Occluded objects are annotated by their visible part only: instance masks are (almost) disjoint."""
    coco = _coco(synth.train_json)
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                inter = int((masks[i] & masks[j]).sum())
                smaller = min(masks[i].sum(), masks[j].sum())
                assert inter <= max(4, 0.15 * smaller), (image_id, anns[i]["id"], anns[j]["id"], inter)


def test_polygons_match_visible_pixels():
    """Each annotation's polygon covers the instance's visible pixels in the label map (IoU > 0.9)."""
    for index in range(6):
        image, label_map, classes = render_image(np.random.default_rng([2, index]), 128, 4)
        anns = _annotations(label_map, classes, image_id=1, next_id=1)
        assert anns
        for ann in anns:
            drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 128, 128)))
            # find the instance by its majority label under the polygon
            labels, counts = np.unique(label_map[drawn.astype(bool)], return_counts=True)
            visible = label_map == labels[np.argmax(counts)]
            iou = (visible & drawn.astype(bool)).sum() / (visible | drawn.astype(bool)).sum()
            assert iou > 0.9, (index, ann["id"], iou)
            assert classes[labels[np.argmax(counts)] - 1] + 1 == ann["category_id"]


def test_dataset_is_varied():
    """Over 40 rendered images: several objects each, tiny and large objects, border cuts, all classes."""
    size, stats = 160, {"sides": [], "border": 0, "classes": set(), "counts": []}
    for index in range(40):
        rng = np.random.default_rng([11, index])
        image, label_map, classes = render_image(rng, size, 5)
        anns = _annotations(label_map, classes, image_id=1, next_id=1)
        stats["counts"].append(len(anns))
        for ann in anns:
            x, y, w, h = ann["bbox"]
            stats["sides"].append(max(w, h))
            stats["border"] += x == 0 or y == 0 or x + w == size or y + h == size
            stats["classes"].add(ann["category_id"])
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        assert image.std() > 10  # textured, not a flat background
    assert max(stats["counts"]) >= 5 and np.mean(stats["counts"]) >= 2.5
    assert min(stats["sides"]) <= 12 and max(stats["sides"]) > size / 2
    assert stats["border"] >= 5
    assert stats["classes"] == {1, 2, 3, 4, 5}


def test_objects_carry_their_class_colour():
    rng = np.random.default_rng([5, 0])
    image, label_map, classes = render_image(rng, 160, 8)
    for inst_id, cls in enumerate(classes, start=1):
        pixels = image[label_map == inst_id].astype(float)
        if len(pixels) > 100:
            assert np.abs(pixels.mean(axis=0) - SHAPES[cls].color).max() < 60


def test_mask_to_polygons_hand_computed():
    mask = np.zeros((10, 12), np.uint8)
    mask[3:7, 2:6] = 1  # 4x4 square, columns 2..5, rows 3..6
    polys = mask_to_polygons(mask)
    assert len(polys) == 1
    pts = np.array(polys[0]).reshape(-1, 2)
    assert pts[:, 0].min() == 2 and pts[:, 0].max() == 6 and pts[:, 1].min() == 3 and pts[:, 1].max() == 7
    area = mask_utils.area(mask_utils.frPyObjects(polys, 10, 12)).sum()
    assert 14 <= area <= 16
    # offset shifts coordinates; two components give two polygons; a hole is not emitted as a polygon
    shifted = np.array(mask_to_polygons(mask, offset=(10, 20))[0]).reshape(-1, 2)
    assert shifted[:, 0].min() == 12 and shifted[:, 1].min() == 23
    two = mask.copy()
    two[0:2, 9:12] = 1
    assert len(mask_to_polygons(two)) == 2
    ring = np.zeros((12, 12), np.uint8)
    ring[1:11, 1:11] = 1
    ring[4:8, 4:8] = 0
    assert len(mask_to_polygons(ring)) == 1


@pytest.mark.parametrize("kwargs, field", [
    ({"num_images": 0}, "--images"), ({"image_size": 16}, "--image-size"),
    ({"num_classes": 9}, "--classes"), ({"val_fraction": 1.0}, "--val-fraction"),
])
def test_bad_arguments(tmp_path, kwargs, field):
    with pytest.raises(UserInputError, match=field):
        generate_synthetic(tmp_path, **kwargs)

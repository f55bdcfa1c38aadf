"""CocoDataset: category mapping, boxes, polygon/RLE masks, crowd handling, filter_empty, errors, loader."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from detflow.data import CocoDataset, build_dataloader, build_val_transforms, generate_synthetic
from detflow.errors import DataError
from detmodels import InputSpec

H, W = 30, 40


def _rect_mask(x0, y0, x1, y1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _write_dataset(root, *, image_size=(H, W)):
    """Two images; categories with non-contiguous ids 3, 7, 10; polygon, compressed RLE,
    uncompressed RLE and crowd annotations. Image 2 only has a crowd annotation."""
    images = root / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((*image_size, 3), 100, np.uint8)).save(images / name)
    compressed = mask_utils.encode(np.asfortranarray(_rect_mask(20, 10, 30, 20)))
    compressed["counts"] = compressed["counts"].decode()
    # uncompressed RLE (column-major run lengths) of a 2x3 rectangle at x 1..2, y 2..4
    uncompressed = {"size": [H, W], "counts": [H + 2, 3, H - 5 + 2, 3, H - 5 + H * (W - 3)]}
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 6, 10, 8], "area": 80, "iscrowd": 0,
         "segmentation": [[5, 6, 15, 6, 15, 14, 5, 14]]},
        {"id": 2, "image_id": 1, "category_id": 10, "bbox": [20, 10, 10, 10], "area": 100, "iscrowd": 0,
         "segmentation": compressed},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [1, 2, 2, 3], "area": 6, "iscrowd": 0,
         "segmentation": uncompressed},
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 1,
         "segmentation": compressed},
        {"id": 5, "image_id": 2, "category_id": 7, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 1,
         "segmentation": compressed},
    ]
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                   {"id": 2, "file_name": "b.png", "height": H, "width": W}],
        "categories": [{"id": 10, "name": "ten"}, {"id": 3, "name": "three"}, {"id": 7, "name": "seven"}],
        "annotations": anns,
    }
    path = root / "ann.json"
    path.write_text(json.dumps(coco))
    return path, images


def test_category_mapping_and_boxes(tmp_path):
    ann, images = _write_dataset(tmp_path)
    ds = CocoDataset(ann, images)
    assert ds.category_ids == [3, 7, 10] and ds.class_names == ["three", "seven", "ten"]
    assert ds.num_classes == 3 and len(ds) == 2
    assert ds.category_to_label(10) == 2 and ds.label_to_category(1) == 7
    sample = ds.load_sample(0)
    assert sample["image"].shape == (H, W, 3) and sample["image"].dtype == np.uint8
    assert sample["image_id"] == 1 and sample["orig_size"] == (H, W) and sample["scale"] == 1.0
    assert sample["masks"] is None
    # crowd annotation 4 is left out of the sample but kept by pycocotools
    assert sample["labels"].tolist() == [1, 2, 0] and sample["labels"].dtype == np.int64
    np.testing.assert_allclose(sample["boxes"], [[5, 6, 15, 14], [20, 10, 30, 20], [1, 2, 3, 5]])
    assert sample["boxes"].dtype == np.float32
    assert 4 in ds.coco.anns and ds.coco.anns[4]["iscrowd"] == 1


def test_masks_polygon_and_rle(tmp_path):
    ann, images = _write_dataset(tmp_path)
    sample = CocoDataset(ann, images, with_masks=True).load_sample(0)
    masks = sample["masks"]
    assert masks.shape == (3, H, W) and masks.dtype == np.uint8
    np.testing.assert_array_equal(masks[1], _rect_mask(20, 10, 30, 20))     # compressed RLE
    np.testing.assert_array_equal(masks[2], _rect_mask(1, 2, 3, 5))         # uncompressed RLE
    assert abs(int(masks[0].sum()) - 80) <= 20 and masks[0][10, 10] == 1   # polygon
    assert masks[0][:, :5].sum() == 0


def test_filter_empty_and_crowd_only_image(tmp_path):
    ann, images = _write_dataset(tmp_path)
    assert len(CocoDataset(ann, images, filter_empty=True)) == 1
    empty = CocoDataset(ann, images, with_masks=True).load_sample(1)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["masks"].shape == (0, H, W)


def test_transforms_applied_by_getitem(tmp_path):
    ann, images = _write_dataset(tmp_path)
    ds = CocoDataset(ann, images, transforms=build_val_transforms(64, InputSpec()))
    image, target, meta = ds[0]
    assert image.shape == (3, 64, 64) and meta["scale"] == pytest.approx(1.6)
    torch.testing.assert_close(target["boxes"][0], torch.tensor([8.0, 9.6, 24.0, 22.4]))
    ds.set_transforms(None)
    assert isinstance(ds[0], dict)


@pytest.mark.parametrize("breakage, match", [
    ("missing_file", "not found"), ("not_json", "not valid JSON"), ("not_coco", "not a COCO file"),
])
def test_bad_annotation_file(tmp_path, breakage, match):
    path = tmp_path / "ann.json"
    if breakage == "not_json":
        path.write_text("{oops")
    elif breakage == "not_coco":
        path.write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match=match) as info:
        CocoDataset(path, tmp_path)
    assert str(path) in str(info.value)


def test_missing_image_and_size_mismatch(tmp_path):
    ann, images = _write_dataset(tmp_path)
    (images / "b.png").unlink()
    ds = CocoDataset(ann, images)
    with pytest.raises(DataError, match="b.png: image file not found"):
        ds.load_sample(1)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(images / "a.png")
    with pytest.raises(DataError, match="image id 1"):
        ds.load_sample(0)


def test_multi_worker_loader_on_synthetic(tmp_path):
    paths = generate_synthetic(tmp_path, num_images=4, image_size=96, num_classes=3, val_fraction=0)
    ds = CocoDataset(paths.train_json, paths.images_dir, with_masks=True,
                     transforms=build_val_transforms(64, InputSpec()))
    assert ds.num_classes == 3 and ds.class_names == ["circle", "triangle", "square"]
    loader = build_dataloader(ds, 2, shuffle=True, num_workers=2, seed=1)
    batches = list(loader)
    assert len(batches) == 2
    ids = []
    for images, targets, metas in batches:
        assert images.shape == (2, 3, 64, 64)
        for target, meta in zip(targets, metas):
            assert target["masks"].shape[1:] == (64, 64)
            assert target["boxes"].shape[0] == target["labels"].shape[0] == target["masks"].shape[0]
            assert meta["scale"] == pytest.approx(64 / 96)
            ids.append(meta["image_id"])
    assert sorted(ids) == [1, 2, 3, 4]
    again = [m["image_id"] for _, _, metas in build_dataloader(ds, 2, shuffle=True, num_workers=0, seed=1)
             for m in metas]
    assert again == ids  # the shuffle order depends on the seed only


class _FlipOnly:
    """A tiny dataset of identical samples whose transforms flip at random (to observe seeding)."""

    def __init__(self, n: int):
        from detflow.data import Compose, PackDetInputs, RandomFlip

        self.n = n
        self.transforms = Compose([RandomFlip(0.5, seed=0), PackDetInputs(InputSpec())])

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        sample = {"image": np.zeros((8, 8, 3), np.uint8), "boxes": np.array([[0, 0, 2, 2]], np.float32),
                  "labels": np.zeros(1, np.int64), "masks": None, "image_id": i, "orig_size": (8, 8), "scale": 1.0}
        return self.transforms(sample)


def _flips(seed):
    loader = build_dataloader(_FlipOnly(32), 8, shuffle=False, num_workers=2, seed=seed)
    return [int(t["boxes"][0, 0] > 0) for _, targets, _ in loader for t in targets]


def test_workers_reseed_transforms():
    first, again, other = _flips(5), _flips(5), _flips(6)
    assert first == again and first != other
    # worker 0 makes batches 0 and 2, worker 1 batches 1 and 3: their flip streams differ
    assert first[0:8] != first[8:16]


@pytest.mark.parametrize("field, value, match", [
    ("bbox", [float("nan"), 6, 10, 8], r"annotation 1: bbox \[nan, 6, 10, 8\] has a non-finite coordinate"),
    ("bbox", [5, 6, float("inf"), 8], r"annotation 1: bbox \[5, 6, inf, 8\] has a non-finite coordinate"),
    ("segmentation", [[5, 6, 15, float("nan"), 15, 14, 5, 14]],
     r"annotation 1: segmentation polygon 0 has a non-finite coordinate \(nan\)"),
])
@pytest.mark.parametrize("filter_empty", [False, True])
def test_non_finite_coordinates_are_refused_not_dropped(tmp_path, field, value, match, filter_empty):
    ann, images = _write_dataset(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"][0][field] = value
    ann.write_text(json.dumps(data))  # JSON NaN / Infinity, as some exporters write them
    with pytest.raises(DataError, match=match) as info:
        CocoDataset(ann, images, with_masks=True, filter_empty=filter_empty).load_sample(0)
    message = str(info.value)
    assert message.startswith(f"{ann}: ") and "detflow data check" in message and "\n" not in message


def test_decompression_bomb_is_a_data_error(tmp_path, monkeypatch):
    ann, images = _write_dataset(tmp_path)
    ds = CocoDataset(ann, images)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40x30 = 1200 > 2x: Pillow's DecompressionBombError
    with pytest.raises(DataError, match="a.png: refusing a decompression bomb") as info:
        ds.load_sample(0)
    assert str(images / "a.png") in str(info.value)

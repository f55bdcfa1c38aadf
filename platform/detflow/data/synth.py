"""Synthetic COCO dataset: coloured shapes on textured backgrounds (the quickstart and test data).

Every image has a non-uniform background (two-colour gradient, low-frequency colour noise, blurred
blobs, crisp random lines, pixel noise) and 2–8 objects of ``num_classes`` classes, each class a
distinct shape *and* colour (with per-object colour jitter and shading). Object sizes range from
≈8 px to more than half the image; objects overlap and are cut by the image border.

Annotations always describe what is *visible*: objects are painted into an instance label map, later
objects occluding earlier ones, and every annotation (polygon ``segmentation``, ``bbox``, ``area``) is
derived from the visible pixels of its instance. A placement that would hide more than 60 % of an
earlier object, or punch a hole into it (COCO polygons cannot express holes), is retried elsewhere.

Generation is deterministic: one ``numpy.random.Generator`` per image seeded with ``(seed, index)``,
Pillow drawing and a fixed JPEG quality, so the same arguments give byte-identical files.

Example::

    paths = generate_synthetic("data/synth", num_images=400, seed=0)
    paths.train_json, paths.val_json, paths.images_dir
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import UserInputError

__all__ = ["SHAPES", "SynthPaths", "generate_synthetic", "render_image", "mask_to_polygons"]


@dataclasses.dataclass(frozen=True)
class ShapeClass:
    """One synthetic class: unit-radius outline vertices (``V×2``) and its base RGB colour."""

    name: str
    vertices: np.ndarray
    color: tuple[int, int, int]


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    angles = phase + np.arange(n) * (2 * math.pi / n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outline = _regular(2 * points, -math.pi / 2)
    outline[1::2] *= inner
    return outline


def _cross(arm: float = 0.34) -> np.ndarray:
    a = arm
    return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a],
                     [-1, a], [-1, -a], [-a, -a]], dtype=np.float64)


SHAPES: tuple[ShapeClass, ...] = (
    ShapeClass("circle", _regular(64), (220, 45, 45)),
    ShapeClass("triangle", _regular(3, -math.pi / 2), (45, 185, 65)),
    ShapeClass("square", _regular(4, math.pi / 4), (45, 85, 225)),
    ShapeClass("star", _star(), (235, 210, 40)),
    ShapeClass("hexagon", _regular(6), (200, 55, 200)),
    ShapeClass("cross", _cross(), (40, 205, 215)),
    ShapeClass("bar", np.array([[-1, -0.38], [1, -0.38], [1, 0.38], [-1, 0.38]]), (245, 140, 30)),
    ShapeClass("pentagon", _regular(5, -math.pi / 2), (240, 240, 240)),
)
"""The fixed class list; ``num_classes=K`` uses the first ``K`` entries."""

MIN_VISIBLE_PIXELS = 10
MIN_VISIBLE_FRACTION = 0.4
JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class SynthPaths:
    """Where :func:`generate_synthetic` wrote the dataset."""

    train_json: Path
    val_json: Path
    images_dir: Path


# --------------------------------------------------------------------------------------------------
# background


def _background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Gradient + low-frequency colour noise + blurred blobs, then crisp lines (RGB image).

    The smooth layers are built on a coarse grid and at half resolution, then upsampled (fast).
    """
    grey = rng.uniform(50, 200, size=2)
    c0, c1 = (grey[:, None] + rng.uniform(-45, 45, size=(2, 3))).clip(0, 255)
    angle = rng.uniform(0, 2 * math.pi)
    gh, gw = h // 32 + 2, w // 32 + 2
    t = np.linspace(0, 1, gw)[None, :] * math.cos(angle) + np.linspace(0, 1, gh)[:, None] * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    grid = c0 + t[..., None] * (c1 - c0) + rng.normal(0, rng.uniform(8, 22), size=(gh, gw, 3))
    hh, hw = max(h // 2, 1), max(w // 2, 1)
    image = Image.fromarray(grid.clip(0, 255).astype(np.uint8)).resize((hw, hh), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):
        cx, cy = rng.uniform(0, hw), rng.uniform(0, hh)
        rx, ry = rng.uniform(0.05, 0.25) * hw, rng.uniform(0.05, 0.25) * hh
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_muted(rng))
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.5, 3.5))))
    image = image.resize((w, h), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 9)):
        x0, y0, x1, y1 = rng.uniform(0, 1, size=4) * [w, h, w, h]
        draw.line([float(x0), float(y0), float(x1), float(y1)], fill=_muted(rng), width=int(rng.integers(1, 4)))
    return image


def _muted(rng: np.random.Generator) -> tuple[int, int, int]:
    grey = rng.uniform(30, 225)
    return tuple(int(v) for v in np.clip(grey + rng.uniform(-40, 40, size=3), 0, 255))


# --------------------------------------------------------------------------------------------------
# objects


def _object_outline(rng: np.random.Generator, shape: ShapeClass, size: float, h: int, w: int) -> np.ndarray:
    """Vertices (``V×2``, x/y pixels) of one placed object: scaled, stretched, rotated, translated."""
    stretch = rng.uniform(0.8, 1.2)
    pts = shape.vertices * (size / 2) * np.array([stretch, 1 / stretch])
    theta = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    margin = 0.25 * size
    centre = rng.uniform([-margin, -margin], [w + margin, h + margin])
    return pts @ rot.T + centre


def _rasterize(outline: np.ndarray, h: int, w: int) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """Pixel mask of a polygon clipped to the image: (crop mask, (x0, y0, x1, y1)) or None if outside."""
    x0, y0 = np.floor(outline.min(axis=0)).astype(int)
    x1, y1 = np.ceil(outline.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    crop = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(crop).polygon([(float(x) - x0, float(y) - y0) for x, y in outline], fill=1)
    return np.asarray(crop, dtype=bool), (x0, y0, x1, y1)


def _polygon_area(outline: np.ndarray) -> float:
    x, y = outline[:, 0], outline[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _has_hole(mask: np.ndarray) -> bool:
    from scipy import ndimage

    return bool((ndimage.binary_fill_holes(mask, structure=np.ones((3, 3), bool)) & ~mask).any())


def _occlusion_ok(label_map: np.ndarray, instances: list[dict], new_mask: np.ndarray, box) -> bool:
    """Whether painting ``new_mask`` at ``box`` keeps every earlier instance visible and hole-free."""
    x0, y0, x1, y1 = box
    under = label_map[y0:y1, x0:x1][new_mask]
    for inst_id in np.unique(under[under > 0]):
        inst = instances[inst_id - 1]
        covered = int((under == inst_id).sum())
        if inst["visible"] - covered < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * inst["full"]):
            return False
        ix0, iy0, ix1, iy1 = inst["box"]
        remaining = label_map[iy0:iy1, ix0:ix1] == inst_id
        occluder = np.zeros_like(remaining)
        ox0, oy0, ox1, oy1 = max(x0, ix0), max(y0, iy0), min(x1, ix1), min(y1, iy1)
        occluder[oy0 - iy0:oy1 - iy0, ox0 - ix0:ox1 - ix0] = new_mask[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0]
        if _has_hole(remaining & ~occluder):
            return False
    return True


def _paint(canvas: np.ndarray, rng: np.random.Generator, shape: ShapeClass, mask: np.ndarray, box) -> None:
    """Fill the object's pixels with its jittered class colour and a soft linear shading."""
    x0, y0, x1, y1 = box
    color = np.clip(np.array(shape.color, np.float32) + rng.uniform(-30, 30, size=3), 0, 255)
    hh, ww = mask.shape
    ramp = np.linspace(-1, 1, ww, dtype=np.float32)[None, :] * rng.uniform(-18, 18)
    ramp = ramp + np.linspace(-1, 1, hh, dtype=np.float32)[:, None] * rng.uniform(-18, 18)
    region = canvas[y0:y1, x0:x1]
    region[mask] = (color[None, None, :] + ramp[..., None])[mask]


def _place(rng: np.random.Generator, cls: int, size: float, label_map: np.ndarray, instances: list[dict],
           attempts: int = 6) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """Try ``attempts`` random poses of one object; the first one mostly inside the image that keeps
    every earlier instance visible and hole-free is written into ``label_map`` and ``instances``."""
    h, w = label_map.shape
    for _ in range(attempts):
        outline = _object_outline(rng, SHAPES[cls], size, h, w)
        raster = _rasterize(outline, h, w)
        if raster is None:
            continue
        mask, box = raster
        full = int(mask.sum())
        if full < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * _polygon_area(outline)):
            continue  # mostly outside the image
        if not _occlusion_ok(label_map, instances, mask, box):
            continue
        x0, y0, x1, y1 = box
        under = label_map[y0:y1, x0:x1][mask]
        for inst_id, covered in zip(*np.unique(under[under > 0], return_counts=True)):
            instances[inst_id - 1]["visible"] -= int(covered)
        label_map[y0:y1, x0:x1][mask] = len(instances) + 1
        instances.append({"cls": cls, "box": box, "full": full, "visible": full})
        return mask, box
    return None


def render_image(rng: np.random.Generator, size: int, num_classes: int,
                 max_objects: int = 8) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Render one ``size×size`` image with 2..``max_objects`` objects (fewer when placements fail).

    Sizes are log-uniform in [8, 0.75·size] px; larger objects tend to be drawn first.

    Returns:
        image: ``H×W×3`` uint8 RGB (before JPEG compression).
        label_map: ``H×W`` uint8; pixel value ``k > 0`` is visible instance ``k``.
        classes: class index of instance ``k`` at position ``k - 1``.
    """
    canvas = np.asarray(_background(rng, size, size), dtype=np.float32).copy()
    label_map = np.zeros((size, size), np.uint8)
    instances: list[dict] = []
    n = int(rng.integers(2, max_objects + 1))
    sizes = np.exp(rng.uniform(math.log(8), math.log(0.75 * size), size=n))
    for obj_size in sizes[np.argsort(-sizes * rng.uniform(0.5, 1.5, size=n))]:
        cls = int(rng.integers(num_classes))
        placed = _place(rng, cls, float(obj_size), label_map, instances)
        if placed is not None:
            _paint(canvas, rng, SHAPES[cls], *placed)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(2, 8))
    return canvas.clip(0, 255).round().astype(np.uint8), label_map, [inst["cls"] for inst in instances]


# --------------------------------------------------------------------------------------------------
# mask -> COCO polygons


def _simplify(points: np.ndarray, tol: float) -> np.ndarray:
    """Ramer–Douglas–Peucker on an open polyline (``N×2``); endpoints kept."""
    keep = np.zeros(len(points), bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        seg = points[j] - points[i]
        rel = points[i + 1:j] - points[i]
        norm = math.hypot(*seg)
        dist = np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / norm if norm > 0 else np.hypot(*rel.T)
        k = int(np.argmax(dist))
        if dist[k] > tol:
            keep[i + 1 + k] = True
            stack += [(i, i + 1 + k), (i + 1 + k, j)]
    return points[keep]


def mask_to_polygons(mask: np.ndarray, offset: tuple[float, float] = (0.0, 0.0), tol: float = 0.35,
                     min_area: float = 2.0) -> list[list[float]]:
    """COCO polygons (``[x1, y1, x2, y2, …]`` in pixel-edge coordinates) of a binary mask's outer boundaries.

    Boundaries are traced with marching squares (contourpy) at level 0.5, so a vertex lies on the edge
    between a foreground and a background pixel; ``offset`` (x, y) is added (the mask's crop origin).
    Loops are simplified with Ramer–Douglas–Peucker (``tol`` px); holes and loops smaller than
    ``min_area`` px² are dropped.
    """
    import contourpy

    padded = np.pad(mask.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5)
    polygons = []
    for line in lines:
        loop = np.asarray(line, np.float64)
        if len(loop) < 4:
            continue
        x, y = loop[:, 0], loop[:, 1]
        signed = 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
        if signed < min_area:  # contourpy keeps foreground on one side: holes have negative area
            continue
        far = int(np.argmax(np.hypot(*(loop - loop[0]).T)))
        simple = np.concatenate([_simplify(loop[:far + 1], tol)[:-1], _simplify(loop[far:], tol)[:-1]])
        if len(simple) < 3:
            continue
        simple = simple + np.array(offset) - 0.5  # padded index -> pixel-edge coordinates
        polygons.append([round(float(v), 2) for v in simple.reshape(-1)])
    return polygons


# --------------------------------------------------------------------------------------------------
# dataset files


def _annotations(label_map: np.ndarray, classes: list[int], image_id: int, next_id: int) -> list[dict]:
    """One COCO annotation per visible instance of ``label_map``.

    ``segmentation`` traces the instance's visible pixels; ``bbox`` and ``area`` are those of the
    polygons as pycocotools rasterises them (they differ from the pixel mask only by isolated
    diagonal pixels at sharp tips), so box, area and mask agree exactly for every consumer.
    """
    from pycocotools import mask as mask_utils
    from scipy import ndimage

    anns = []
    for inst_id, region in enumerate(ndimage.find_objects(label_map, max_label=len(classes)), start=1):
        if region is None:
            continue
        mask = label_map[region] == inst_id
        if int(mask.sum()) < MIN_VISIBLE_PIXELS:
            continue
        polygons = mask_to_polygons(mask)
        if not polygons:
            continue
        drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, *mask.shape)))
        ys, xs = np.nonzero(drawn)
        if len(xs) < MIN_VISIBLE_PIXELS:
            continue
        y0, x0 = region[0].start, region[1].start
        polygons = [[round(v + (x0, y0)[i % 2], 2) for i, v in enumerate(poly)] for poly in polygons]
        anns.append({
            "id": next_id + len(anns), "image_id": image_id, "category_id": classes[inst_id - 1] + 1,
            "bbox": [x0 + int(xs.min()), y0 + int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
            "area": int(len(xs)), "iscrowd": 0, "segmentation": polygons,
        })
    return anns


def _validate_args(num_images: int, image_size: int, num_classes: int, val_fraction: float) -> None:
    if num_images < 1:
        raise UserInputError(f"--images: expected an integer >= 1, got {num_images}")
    if image_size < 32:
        raise UserInputError(f"--image-size: expected an integer >= 32, got {image_size}")
    if not 1 <= num_classes <= len(SHAPES):
        raise UserInputError(f"--classes: expected an integer in [1, {len(SHAPES)}], got {num_classes}")
    if not 0 <= val_fraction < 1:
        raise UserInputError(f"--val-fraction: expected a number in [0, 1), got {val_fraction}")


def _coco(images: list[dict], anns: list[dict], num_classes: int, seed: int, split: str) -> dict:
    categories = [{"id": k + 1, "name": SHAPES[k].name, "supercategory": "shape"} for k in range(num_classes)]
    info = {"description": f"detflow synthetic shapes ({split})", "version": "1", "seed": seed}
    return {"info": info, "licenses": [], "images": images, "annotations": anns, "categories": categories}


def generate_synthetic(out_dir: str | Path, *, num_images: int = 200, seed: int = 0, image_size: int = 320,
                       num_classes: int = 4, val_fraction: float = 0.2,
                       progress: Callable[[int, int], None] | None = None) -> SynthPaths:
    """Write ``out_dir/images/*.jpg``, ``out_dir/train.json`` and ``out_dir/val.json`` (COCO).

    Args:
        num_images: total images; ``round(num_images * val_fraction)`` of them (at least one when the
            fraction is positive and there are two or more images) go to ``val.json``.
        image_size: side of the square images in pixels.
        num_classes: the first ``num_classes`` entries of :data:`SHAPES` (category ids ``1..K``).
        progress: called as ``progress(done, total)`` after each image.

    Raises:
        UserInputError: an argument out of range.
    """
    _validate_args(num_images, image_size, num_classes, val_fraction)
    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    n_val = int(round(num_images * val_fraction))
    if val_fraction > 0 and num_images >= 2:
        n_val = min(max(n_val, 1), num_images - 1)
    val_ids = set((np.random.default_rng([seed, 2**31 - 1]).permutation(num_images)[:n_val] + 1).tolist())
    split = {"train": ([], []), "val": ([], [])}
    for index in range(num_images):
        image_id = index + 1
        rng = np.random.default_rng([seed, index])
        pixels, label_map, classes = render_image(rng, image_size, num_classes)
        file_name = f"{image_id:06d}.jpg"
        Image.fromarray(pixels).save(images_dir / file_name, format="JPEG", quality=JPEG_QUALITY)
        images, anns = split["val" if image_id in val_ids else "train"]
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
        anns += _annotations(label_map, classes, image_id, next_id=image_id * 100)
        if progress is not None:
            progress(index + 1, num_images)
    paths = SynthPaths(out / "train.json", out / "val.json", images_dir)
    for name, path in (("train", paths.train_json), ("val", paths.val_json)):
        coco = _coco(*split[name], num_classes, seed, name)
        from ..atomic import atomic_write

        atomic_write(path, json.dumps(coco, separators=(",", ":")))
    return paths

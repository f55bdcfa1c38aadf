"""The pixel kernels of the data pipeline, on OpenCV (uint8 throughout, one thread).

Every function takes and returns ``H×W×3`` uint8 RGB numpy images (C-contiguous or views) and never
modifies its input. OpenCV is used for what dominates the training pipeline's time (RTMDet §3.3
stage 1 at 320 px): decoding, the bilinear resample of the large-scale-jitter window, the HSV jitter
and the MixUp blend — the kernels MMDetection uses too (``cv2.imdecode``, ``cv2.resize``
``INTER_LINEAR``, ``cv2.cvtColor`` to HSV + lookup tables, uint8 blending).

Conventions: bilinear sampling maps output pixel centres to input coordinates
``x_in = (x_out + 0.5) / s − 0.5`` with edge pixels replicated (``cv2.resize``), no antialiasing on
downscaling; HSV is OpenCV's 8-bit HSV (hue 0–179, saturation and value 0–255).

Example::

    image = decode_image(Path("a.jpg").read_bytes())      # H×W×3 RGB
    small = resize_bilinear(image, 160, 120)                # 120×160×3
    window = resized_window(image, 2.0, 2.0, 10, 20, 64, 48)  # 48×64 window of the 2× resize
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["decode_image", "resize_bilinear", "resized_window", "TiledCanvas", "resized_tiles_window",
           "apply_hsv_luts", "blend", "warp_affine", "flip_columns", "to_planes"]

cv2.setNumThreads(1)  # the pipeline runs one sample per DataLoader worker process: no nested threads
cv2.ocl.setUseOpenCL(False)

_FULL_RESIZE_AREA = 3.0  # resized-image / window area below which resizing all costs less (cv2 4.10)
_DECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # as Pillow: EXIF orientation ignored


def decode_image(data: bytes | np.ndarray) -> np.ndarray | None:
    """Encoded bytes (JPEG, PNG, BMP, WebP, TIFF …) -> ``H×W×3`` uint8 RGB, or ``None`` when OpenCV
    cannot decode them (the caller falls back to Pillow for the format or the error message).
    Grey, palette and 16-bit images are converted to 8-bit RGB; alpha is dropped."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        return None
    image = cv2.imdecode(buf, _DECODE_FLAGS)
    if image is None or image.ndim != 3 or image.dtype != np.uint8:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)


def resize_bilinear(image: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """Bilinear resize to ``new_h×new_w`` (the input itself when the size is unchanged)."""
    if image.shape[:2] == (new_h, new_w):
        return image
    return cv2.resize(image, (int(new_w), int(new_h)), interpolation=cv2.INTER_LINEAR)


def resized_window(image: np.ndarray, sx: float, sy: float, x0: int, y0: int, width: int,
                   height: int) -> np.ndarray:
    """The ``height×width`` window at ``(x0, y0)`` of ``image`` resized by ``(sx, sy)``.

    When the whole resized image is small (at most ``_FULL_RESIZE_AREA`` times the window: a
    downscale or a mild upscale) it is resized whole and cropped, which is cheaper per pixel;
    otherwise only the window is computed (one ``warpAffine`` with the resize's pixel-centre
    mapping, edges replicated). The two kernels agree within one grey level. A :class:`TiledCanvas`
    renders the window from its tiles (:func:`resized_tiles_window`) without drawing the canvas."""
    if isinstance(image, TiledCanvas):
        return image.resized_window(sx, sy, x0, y0, width, height)
    h, w = image.shape[:2]
    new_w, new_h = int(round(w * sx)), int(round(h * sy))
    if (new_w * new_h <= _FULL_RESIZE_AREA * width * height and x0 + width <= new_w and y0 + height <= new_h
            and abs(new_w / w - sx) < 1e-9 and abs(new_h / h - sy) < 1e-9):
        return resize_bilinear(image, new_w, new_h)[y0:y0 + height, x0:x0 + width]
    m = np.array([[sx, 0.0, 0.5 * sx - 0.5 - x0], [0.0, sy, 0.5 * sy - 0.5 - y0]], np.float64)
    return cv2.warpAffine(image, m, (int(width), int(height)), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


Tile = tuple[np.ndarray, int, int]  # (h×w×3 uint8 image, x, y): covers canvas pixels [x, x+w) × [y, y+h)


class TiledCanvas:
    """An undrawn ``height×width×3`` uint8 canvas: disjoint ``tiles`` on a ``pad_val`` background.

    A mosaic hands this to the large-scale-jitter crop that follows it, which renders only its
    window (:func:`resized_window` dispatches to :meth:`resized_window`), so the 2S×2S canvas is
    never written. ``shape`` / ``dtype`` read like an image's; :meth:`render` (or ``np.asarray``)
    draws the canvas."""

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, width: int, height: int, tiles: Sequence[Tile], pad_val: int) -> None:
        self.shape = (int(height), int(width), 3)
        self.tiles, self.pad_val = list(tiles), int(pad_val)

    def render(self) -> np.ndarray:
        """The drawn ``height×width×3`` canvas."""
        canvas = np.full(self.shape, self.pad_val, np.uint8)
        for image, x, y in self.tiles:
            canvas[y:y + image.shape[0], x:x + image.shape[1]] = image
        return canvas

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        canvas = self.render()
        return canvas if dtype is None else canvas.astype(dtype)

    def resized_window(self, sx: float, sy: float, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """:func:`resized_tiles_window` of this canvas."""
        return resized_tiles_window(self.tiles, self.pad_val, sx, sy, x0, y0, width, height)

    def __repr__(self) -> str:
        return f"TiledCanvas({self.shape[1]}x{self.shape[0]}, {len(self.tiles)} tiles)"


def _centre_span(lo: int, hi: int, s: float, offset: int, size: int) -> tuple[int, int]:
    """Output pixels ``[a, b)`` (clamped to ``[0, size)``) whose centres ``(X + offset + 0.5) / s``
    lie in ``[lo, hi)``; tiles sharing an edge compute it identically, so their spans abut."""
    a = math.ceil(lo * s - offset - 0.5)
    b = math.ceil(hi * s - offset - 0.5)
    return min(max(a, 0), size), min(max(b, 0), size)


def resized_tiles_window(tiles: Sequence[Tile], pad_val: int, sx: float, sy: float, x0: int, y0: int,
                         width: int, height: int) -> np.ndarray:
    """The ``height×width×3`` window at ``(x0, y0)`` of a tiled canvas resized by ``(sx, sy)``,
    computed from the tiles (no canvas).

    ``tiles``: ``(image, x, y)`` with ``image`` ``h×w×3`` uint8 covering the canvas pixels
    ``[x, x + w) × [y, y + h)`` (integers; the rectangles are disjoint); elsewhere the canvas is
    ``pad_val``. Output pixel ``(Y, X)`` has its centre at canvas point
    ``((X + x0 + 0.5) / sx, (Y + y0 + 0.5) / sy)``; it takes the tile whose rectangle holds that
    point (``pad_val`` if none) and is that tile alone sampled bilinearly at
    ``((X + x0 + 0.5) / sx − 0.5, …)``, the tile's edge pixels replicated (one ``warpAffine`` per
    tile, into its block of the output). Equals :func:`resized_window` of the drawn canvas within
    one grey level, except in the output pixels next to an edge between two tiles or a tile and
    the padding, where the canvas's resample blended both sides."""
    blocks = []
    for image, x, y in tiles:
        th, tw = image.shape[:2]
        c0, c1 = _centre_span(x, x + tw, sx, x0, width)
        r0, r1 = _centre_span(y, y + th, sy, y0, height)
        if c1 > c0 and r1 > r0:
            blocks.append((image, x, y, c0, c1, r0, r1))
    covered = sum((c1 - c0) * (r1 - r0) for *_, c0, c1, r0, r1 in blocks)
    full = covered == width * height  # no padding shows: nothing to fill first
    out = np.empty((height, width, 3), np.uint8) if full else np.full((height, width, 3), pad_val, np.uint8)
    for image, x, y, c0, c1, r0, r1 in blocks:
        m = np.array([[sx, 0.0, sx * (x + 0.5) - 0.5 - x0 - c0], [0.0, sy, sy * (y + 0.5) - 0.5 - y0 - r0]])
        cv2.warpAffine(image, m, (c1 - c0, r1 - r0), dst=out[r0:r1, c0:c1], flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return out


def warp_affine(image: np.ndarray, m: np.ndarray, out_w: int, out_h: int, border_value: int) -> np.ndarray:
    """Bilinear affine warp by the 2×3 (or 3×3) forward matrix ``m`` (input -> output pixel
    coordinates, pixel corners at integers like Pillow's ``AFFINE``); outside pixels ``border_value``."""
    m = np.asarray(m, np.float64)[:2].copy()
    m[:, 2] += m[:, 0] * 0.5 + m[:, 1] * 0.5 - 0.5  # corner convention -> OpenCV's pixel centres
    return cv2.warpAffine(image, m, (int(out_w), int(out_h)), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(border_value,) * 3)


def apply_hsv_luts(image: np.ndarray, lut_h: np.ndarray | None, lut_s: np.ndarray | None,
                   lut_v: np.ndarray | None) -> np.ndarray:
    """Map OpenCV's H (0–179), S, V channels of an RGB image through 256-entry uint8 tables (``None``:
    the channel is left as it is): one conversion to HSV, one ``cv2.LUT`` per changed channel, one
    conversion back (YOLOX)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    planes = list(cv2.split(hsv))
    for c, lut in enumerate((lut_h, lut_s, lut_v)):
        if lut is not None:
            cv2.LUT(planes[c], lut, dst=planes[c])
    cv2.merge(planes, dst=hsv)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=hsv)


def flip_columns(image: np.ndarray) -> np.ndarray:
    """``image[:, ::-1]`` as a new C-contiguous array (``cv2.flip``: whole pixels, vectorised)."""
    if image.ndim == 3 and image.shape[2] <= 4 and image.dtype == np.uint8:
        return cv2.flip(image, 1)
    return np.ascontiguousarray(image[:, ::-1])


def to_planes(image: np.ndarray, *, reverse: bool = False) -> np.ndarray:
    """``H×W×C`` uint8 -> ``C×H×W`` uint8 planes (``reverse``: channel order reversed, RGB -> BGR)."""
    planes = cv2.split(image) if image.shape[2] <= 4 else [image[..., c] for c in range(image.shape[2])]
    return np.stack(planes[::-1] if reverse else planes)


def blend(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """``round(lam·a + (1 − lam)·b)`` in uint8 (saturating), without float images."""
    return cv2.addWeighted(a, float(lam), b, 1.0 - float(lam), 0.0)

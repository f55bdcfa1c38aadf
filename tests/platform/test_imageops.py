"""The OpenCV pixel kernels of ``detflow.data.imageops`` against their plain definitions."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from detflow.data.imageops import (
    TiledCanvas, apply_hsv_luts, blend, decode_image, flip_columns, resize_bilinear, resized_tiles_window,
    resized_window, to_planes, warp_affine,
)


def _image(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise, H×W×3 uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 2 % 256, yy * 3 % 256, (xx + yy) % 256], -1)
    return np.clip(base + rng.integers(-10, 11, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("scale", [0.5, 0.8, 1.3, 2.0, 2.7])
def test_resized_window_is_the_window_of_the_full_resize(scale):
    image = _image()
    new_w, new_h = round(128 * scale), round(96 * scale)
    full = resize_bilinear(image, new_w, new_h).astype(np.int16)
    x0, y0, cw, ch = new_w // 5, new_h // 7, new_w // 2, new_h // 2
    window = resized_window(image, new_w / 128, new_h / 96, x0, y0, cw, ch)
    assert window.shape == (ch, cw, 3)
    assert np.abs(full[y0:y0 + ch, x0:x0 + cw] - window).max() <= 1


def _bilinear(image: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Plain float bilinear sample of ``image`` at columns ``u`` (W) × rows ``v`` (H), edges replicated."""
    h, w = image.shape[:2]
    uc, vc = np.clip(u, 0, w - 1), np.clip(v, 0, h - 1)
    c0, r0 = np.minimum(np.floor(uc).astype(int), w - 2), np.minimum(np.floor(vc).astype(int), h - 2)
    fx, fy = (uc - c0)[None, :, None], (vc - r0)[:, None, None]
    im = image.astype(np.float64)
    top = im[np.ix_(r0, c0)] * (1 - fx) + im[np.ix_(r0, c0 + 1)] * fx
    bottom = im[np.ix_(r0 + 1, c0)] * (1 - fx) + im[np.ix_(r0 + 1, c0 + 1)] * fx
    return top * (1 - fy) + bottom * fy


def _tiles_reference(tiles, pad_val, sx, sy, x0, y0, width, height) -> np.ndarray:
    """The definition of ``resized_tiles_window``, pixel centre by pixel centre."""
    cu, cv = (np.arange(width) + x0 + 0.5) / sx, (np.arange(height) + y0 + 0.5) / sy  # centres on the canvas
    out = np.full((height, width, 3), float(pad_val))
    for image, x, y in tiles:
        th, tw = image.shape[:2]
        inside = ((cv >= y) & (cv < y + th))[:, None] & ((cu >= x) & (cu < x + tw))[None, :]
        out[inside] = _bilinear(image, cu - 0.5 - x, cv - 0.5 - y)[inside]
    return np.round(out)


_TILES = [(_image(50, 70, 1), 0, 0), (_image(60, 50, 2), 70, 0), (_image(40, 64, 3), 6, 60)]  # 120×100, padding


@pytest.mark.parametrize("sx,sy,x0,y0,width,height", [
    (1.0, 1.0, 0, 0, 120, 100), (1.7, 1.3, 30, 20, 100, 70), (0.6, 0.55, 5, 3, 60, 50), (2.5, 2.5, 150, 110, 64, 48),
])
def test_resized_tiles_window_matches_its_definition(sx, sy, x0, y0, width, height):
    ours = resized_tiles_window(_TILES, 114, sx, sy, x0, y0, width, height)
    assert ours.shape == (height, width, 3) and ours.dtype == np.uint8
    ref = _tiles_reference(_TILES, 114, sx, sy, x0, y0, width, height)
    assert np.abs(ref - ours).max() <= 1  # warpAffine's 1/32-pixel positions on gradients of a few levels


def test_tiled_canvas_draws_its_tiles_and_resamples_like_the_drawn_canvas_inside_tiles():
    canvas = TiledCanvas(120, 100, _TILES, 114)
    drawn = canvas.render()
    assert canvas.shape == drawn.shape == (100, 120, 3) and np.array_equal(np.asarray(canvas), drawn)
    assert (drawn[60:, :6] == 114).all() and np.array_equal(drawn[:50, 70:120], _TILES[1][0][:50])
    lazy, full = resized_window(canvas, 1.3, 1.3, 10, 5, 120, 100), resized_window(drawn, 1.3, 1.3, 10, 5, 120, 100)
    inner = np.s_[5:55, 5:75]  # output pixels far from any tile edge: (X + 10.5) / 1.3 in [12, 66), rows [7, 45)
    assert np.abs(lazy[inner].astype(np.int16) - full[inner]).max() <= 1
    assert (lazy != full).any(axis=-1)[60:66].any()  # the seam rows at canvas y = 50 differ: no blending


def test_warp_affine_matches_pillow_affine_within_one_level():
    image = _image()
    m = np.array([[1.3, 0.0, -20.0], [0.0, 0.9, 7.0], [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(m)
    pil = np.array(Image.fromarray(image).transform((100, 80), Image.AFFINE, data=tuple(inv[:2].ravel()),
                                                    resample=Image.BILINEAR, fillcolor=(114,) * 3))
    ours = warp_affine(image, m, 100, 80, 114)
    inside = (slice(2, 60), slice(2, 95))  # away from the border, where Pillow and OpenCV clip differently
    assert np.abs(pil[inside].astype(np.int16) - ours[inside]).max() <= 1


def test_hsv_identity_tables_round_trip_and_value_shift_brightens():
    image = _image()
    x = np.arange(256, dtype=np.uint8)
    error = np.abs(apply_hsv_luts(image, x, x, x).astype(np.int16) - image)  # 8-bit HSV: hue in 180 steps
    assert error.mean() < 1.0 and error.max() <= 8
    brighter = apply_hsv_luts(image, x, x, np.clip(np.arange(256) + 30, 0, 255).astype(np.uint8))
    assert brighter.max(-1).astype(np.int16).mean() > image.max(-1).mean() + 20  # V = max(R, G, B)


@pytest.mark.parametrize("lam", [0.5, 0.3])
def test_blend_is_the_rounded_float_blend(lam):
    a, b = _image(seed=1), _image(seed=2)[::-1].copy()
    expected = np.round(lam * a.astype(np.float64) + (1 - lam) * b.astype(np.float64))
    assert np.abs(blend(a, b, lam).astype(np.int16) - expected).max() <= 1
    if lam == 0.5:
        assert np.array_equal(blend(a, b, lam), (0.5 * a.astype(np.float32) + 0.5 * b.astype(np.float32))
                              .round().astype(np.uint8))


def test_decode_png_is_pillows_rgb_and_garbage_is_none():
    image = _image()
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    assert np.array_equal(decode_image(buf.getvalue()), image)
    grey = io.BytesIO()
    Image.fromarray(image[..., 0]).save(grey, format="PNG")
    assert np.array_equal(decode_image(grey.getvalue()), np.repeat(image[..., :1], 3, -1))
    assert decode_image(b"not an image") is None and decode_image(b"") is None


def test_flip_and_planes():
    image = _image()
    assert np.array_equal(flip_columns(image), image[:, ::-1])
    assert np.array_equal(to_planes(image), image.transpose(2, 0, 1))
    assert np.array_equal(to_planes(image, reverse=True), image[..., ::-1].transpose(2, 0, 1))

"""DeformConv2d (pure torch) against a brute-force per-output loop with explicit bilinear weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detmodels.layers.deform_conv import DeformConv2d, deform_conv2d


def _bilinear(img, y: float, x: float):
    """``C`` values of ``img`` (``C×H×W``) at (y, x); corners outside the image contribute 0."""
    h, w = img.shape[-2:]
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx]
    return out


def _brute_force(x, offset, weight, bias, stride, pad, dil, groups):
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    cg = c // groups
    out = torch.zeros(n, o, ho, wo, dtype=x.dtype)
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                col = torch.zeros(c, kh, kw, dtype=x.dtype)
                for g in range(groups):
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            dy = float(offset[b, 2 * (g * kh * kw + k), oy, ox])
                            dx = float(offset[b, 2 * (g * kh * kw + k) + 1, oy, ox])
                            py = oy * stride - pad + i * dil + dy
                            px = ox * stride - pad + j * dil + dx
                            col[g * cg:(g + 1) * cg, i, j] = _bilinear(x[b, g * cg:(g + 1) * cg], py, px)
                out[b, :, oy, ox] = (weight * col).sum((1, 2, 3)) + bias
    return out


@pytest.mark.parametrize("stride,pad,dil,groups", [(1, 1, 1, 1), (1, 1, 1, 2), (2, 1, 1, 1), (1, 2, 2, 2)])
def test_matches_brute_force(stride, pad, dil, groups):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    ho = (5 + 2 * pad - dil * 2 - 1) // stride + 1
    wo = (6 + 2 * pad - dil * 2 - 1) // stride + 1
    # Offsets up to ±2.5 px push some taps outside the image (zero corners are part of the test).
    offset = (torch.rand(2, 2 * groups * 9, ho, wo, generator=g, dtype=torch.float64) - 0.5) * 5
    got = deform_conv2d(x, offset, weight, bias, stride, pad, dil, groups)
    want = _brute_force(x, offset, weight, bias, stride, pad, dil, groups)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_zero_offsets_equal_plain_conv():
    torch.manual_seed(1)
    m = DeformConv2d(6, 5, 3, 1, 1, deformable_groups=3)
    x = torch.randn(1, 6, 7, 7)
    offset = torch.zeros(1, 2 * 3 * 9, 7, 7)
    torch.testing.assert_close(m(x, offset), F.conv2d(x, m.weight, m.bias, 1, 1), rtol=1e-5, atol=1e-5)


def test_integer_offset_shifts_the_input():
    """Offset (0, +1) on every tap of a 1×1 deformable conv reads the right-hand neighbour."""
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    weight = torch.ones(1, 1, 1, 1)
    offset = torch.zeros(1, 2, 3, 4)
    offset[:, 1] = 1.0
    out = deform_conv2d(x, offset, weight, None, 1, 0, 1, 1)
    want = torch.tensor([[1.0, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0]])
    torch.testing.assert_close(out[0, 0], want)


def test_single_pixel_width_and_gradients():
    x = torch.randn(1, 2, 1, 1, requires_grad=True)
    offset = torch.full((1, 18, 1, 1), 0.25, requires_grad=True)
    m = DeformConv2d(2, 2, 3, 1, 1)
    out = m(x, offset)
    assert out.shape == (1, 2, 1, 1)
    out.sum().backward()
    assert x.grad is not None and offset.grad is not None and torch.isfinite(offset.grad).all()


def test_bad_offset_channels_rejected():
    with pytest.raises(ValueError, match="offset needs 18 channels"):
        deform_conv2d(torch.zeros(1, 2, 4, 4), torch.zeros(1, 9, 4, 4), torch.zeros(1, 2, 3, 3), None, 1, 1)

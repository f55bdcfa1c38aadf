"""SqueezeExcitation and PyramidPoolingModule against hand-computed values."""
import math

import functools

import pytest
import torch

from detmodels.layers import PyramidPoolingModule, SqueezeExcitation


close = functools.partial(torch.testing.assert_close, atol=1e-5, rtol=1e-5)


def _sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_se_hand_computed():
    se = SqueezeExcitation(2, reduction=2)  # hidden width 1
    with torch.no_grad():
        se.fc1.weight.copy_(torch.tensor([[1.0, 1.0]]))
        se.fc1.bias.zero_()
        se.fc2.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        se.fc2.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.stack((torch.ones(3, 3), 3 * torch.ones(3, 3)))[None]  # channel means 1 and 3
    y = se(x)
    # squeeze (1, 3) → fc1 4 → ReLU 4 → fc2 (4.5, −4) → sigmoid → rescale
    close(y[0, 0], torch.full((3, 3), _sig(4.5)))
    close(y[0, 1], torch.full((3, 3), 3 * _sig(-4.0)))


def test_se_relu_clips_negative_squeeze():
    se = SqueezeExcitation(4, reduction=4)
    with torch.no_grad():
        se.fc1.weight.fill_(1.0)
        se.fc1.bias.zero_()
        se.fc2.weight.fill_(5.0)
        se.fc2.bias.zero_()
    x = -torch.ones(1, 4, 2, 2)  # squeeze sum −4 → ReLU 0 → sigmoid(0) = 0.5
    close(se(x), -0.5 * torch.ones(1, 4, 2, 2))


def test_ppm_pyramid_hand_computed():
    ppm = PyramidPoolingModule(4).eval()
    with torch.no_grad():
        for branch in ppm.branches:  # each branch picks channel 0 (1×1 conv, no BN, ReLU)
            branch.conv.weight.zero_()
            branch.conv.weight[0, 0] = 1.0
            branch.conv.bias.zero_()
    x = torch.zeros(1, 4, 6, 6)
    x[0, 0] = torch.arange(6.0)[None, :].expand(6, 6)  # value = column index
    ppm.fuse = torch.nn.Identity()
    out = ppm(x)
    assert out.shape == (1, 4 + 4 * 1, 6, 6)
    feats = out[0, 4:, 0]  # one row of each branch (columns vary only)
    expected = torch.tensor([
        [2.5] * 6,                                # bin 1: global mean
        [1.0, 1.0, 2.0, 3.0, 4.0, 4.0],           # bin 2: [1, 4] bilinearly upsampled
        [0.5, 1.0, 2.0, 3.0, 4.0, 4.5],           # bin 3: [0.5, 2.5, 4.5]
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],           # bin 6: identity
    ])
    close(feats, expected)
    assert torch.equal(out[:, :4], x)  # the input is carried through the concat


def test_ppm_shapes_and_batch_one_training():
    ppm = PyramidPoolingModule(16, out_channels=8).train()
    y = ppm(torch.randn(1, 16, 5, 7))
    assert y.shape == (1, 8, 5, 7)
    y.sum().backward()
    assert all(p.grad is not None for p in ppm.parameters())


def test_same_max_pools_equal_parallel_pools_exactly():
    from detmodels.layers.spp import same_max_pools

    x = torch.randn(2, 3, 11, 9)
    for kernels in ((5, 9, 13), (3, 5, 7), (5, 3, 9)):
        ref = [torch.nn.functional.max_pool2d(x, k, 1, k // 2) for k in kernels]
        got = same_max_pools(x, kernels)
        assert all(torch.equal(a, b) for a, b in zip(ref, got)), kernels
    with pytest.raises(ValueError, match="odd"):
        same_max_pools(x, (4,))

"""Model size and cost: parameter counts and multiply-accumulates measured with torch's FLOP counter."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["count_params", "count_macs"]


def count_params(model: nn.Module) -> int:
    """Unique parameter elements (shared tensors counted once; BN running stats are buffers)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int | tuple[int, int] = 640, batch: int = 1) -> int:
    """Per-image multiply-accumulates of one eval-mode forward pass (FLOPs / 2, torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.zeros(batch, 3, h, w, device=param.device, dtype=param.dtype)
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
        return counter.get_total_flops() // (2 * batch)
    finally:
        model.train(was_training)

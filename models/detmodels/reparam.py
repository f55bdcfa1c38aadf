"""Re-parameterisation: turn a trained model into its deploy form in place."""
from __future__ import annotations

from torch import nn

__all__ = ["reparameterize_model"]


def _reparameterize_outermost(module: nn.Module) -> None:
    for child in module.children():
        if hasattr(child, "reparameterize"):
            child.reparameterize()  # a block owns its whole subtree (e.g. RepVGG branches)
        else:
            _reparameterize_outermost(child)


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Deploy form, in place: every outermost sub-module with ``reparameterize()`` folds its own
    subtree (BN into convs, RepVGG branches into one 3×3 conv); then modules with
    ``drop_training_branches()`` drop training-only parts (e.g. YOLOv6's anchor-aided predictors).
    Returns ``model`` in eval mode.
    """
    model.eval()
    _reparameterize_outermost(model)
    for module in list(model.modules()):
        if hasattr(module, "drop_training_branches"):
            module.drop_training_branches()
    return model

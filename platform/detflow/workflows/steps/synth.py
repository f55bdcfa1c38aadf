"""``synth``: generate the synthetic COCO dataset (``detflow.data.generate_synthetic``)."""
from __future__ import annotations

from ..context import StepContext
from ..schema import SynthParams


def run(params: SynthParams, ctx: StepContext) -> dict:
    from ...data import generate_synthetic

    paths = generate_synthetic(ctx.path / "data", num_images=params.num_images, seed=params.seed,
                               image_size=params.image_size, num_classes=params.num_classes,
                               val_fraction=params.val_fraction)
    dataset = {"train_json": str(paths.train_json), "val_json": str(paths.val_json), "images_dir": str(paths.images_dir)}
    return {"dataset": dataset, "metrics": {"num_images": params.num_images, "num_classes": params.num_classes}}

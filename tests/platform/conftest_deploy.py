"""A tiny two-level detector for the export / quantisation / benchmark tests (imported explicitly), and
yolov6_n with a non-trivial head plus box batches with targets for the QAT tests.

Load it with ``load_deploy_helpers()`` pattern used in the test files (pytest runs with importlib mode)::

    spec = importlib.util.spec_from_file_location("conftest_deploy", Path(__file__).with_name("conftest_deploy.py"))
"""
from __future__ import annotations

import torch
from torch import nn

import detmodels
from detmodels.layers.conv import ConvNormAct
from detmodels.ops import dense_postprocess


class TinyDet(detmodels.Detector):
    """Stride-8/16 anchor-free toy detector: boxes are ``point ± exp(dist)·stride``; scores are sigmoids."""

    family = "tiny"

    def __init__(self, num_classes: int = 4):
        super().__init__(num_classes, (8, 16))
        self.stem = nn.Sequential(ConvNormAct(3, 8, 3, 2), ConvNormAct(8, 16, 3, 2), ConvNormAct(16, 16, 3, 2))
        self.down = ConvNormAct(16, 32, 3, 2)
        self.cls = nn.ModuleList([nn.Conv2d(16, num_classes, 1), nn.Conv2d(32, num_classes, 1)])
        self.box = nn.ModuleList([nn.Conv2d(16, 4, 1), nn.Conv2d(32, 4, 1)])

    def forward(self, images):
        f1 = self.stem(images)
        f2 = self.down(f1)
        return {"cls": [self.cls[0](f1), self.cls[1](f2)], "box": [self.box[0](f1), self.box[1](f2)]}

    def loss(self, outputs, targets):
        cls = sum(o.sigmoid().mean() for o in outputs["cls"])
        box = sum((o - 1.0).abs().mean() for o in outputs["box"])
        return {"loss_cls": cls, "loss_box": box}

    def decode(self, outputs):
        boxes, scores = [], []
        for c, b, s in zip(outputs["cls"], outputs["box"], self.strides):
            _, _, h, w = c.shape
            yy, xx = torch.meshgrid(torch.arange(h, dtype=c.dtype), torch.arange(w, dtype=c.dtype), indexing="ij")
            points = torch.stack([xx, yy], -1).reshape(1, -1, 2) * s + s // 2
            dist = b.flatten(2).transpose(1, 2).exp() * s
            boxes.append(torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1))
            scores.append(c.flatten(2).transpose(1, 2).sigmoid())
        return torch.cat(boxes, 1), torch.cat(scores, 1)

    def postprocess(self, outputs, image_sizes, score_thr=0.05, nms_iou=0.6, max_det=100, scale_factors=None):
        boxes, scores = self.decode(outputs)
        hw = tuple(int(v) * self.strides[0] for v in outputs["cls"][0].shape[-2:])
        return dense_postprocess(boxes, scores, hw, image_sizes, score_thr, nms_iou, max_det, scale_factors)


def tiny_model(num_classes: int = 4, seed: int = 0) -> TinyDet:
    torch.manual_seed(seed)
    model = TinyDet(num_classes)
    for m in model.modules():  # non-trivial BN statistics so that folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def random_batches(n: int = 3, batch: int = 4, size: int = 64, seed: int = 0) -> list[tuple[torch.Tensor, list]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=gen), [{}] * batch) for _ in range(n)]


BOX_SIZE = 64


def box_batches(n: int = 1, batch: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, list[dict]]]:
    """Dark noise images with one bright box each, and its target (YOLOv6 pixels: RGB in [0, 255])."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        images, targets = torch.rand(batch, 3, BOX_SIZE, BOX_SIZE, generator=gen) * 60, []
        for i in range(batch):
            x0, y0 = torch.randint(0, BOX_SIZE // 2, (2,), generator=gen).tolist()
            w, h = torch.randint(12, BOX_SIZE // 2, (2,), generator=gen).tolist()
            images[i, :, y0:y0 + h, x0:x0 + w] = 220.0
            targets.append({"boxes": torch.tensor([[x0, y0, x0 + w, y0 + h]], dtype=torch.float32),
                            "labels": torch.tensor([i % 4])})
        out.append((images, targets))
    return out


def yolov6_n() -> detmodels.Detector:
    """yolov6_n whose predictors are not the init's zero weights (whose outputs ignore the features)."""
    torch.manual_seed(0)
    model = detmodels.create_model("yolov6_n", num_classes=4)
    with torch.no_grad():
        for name, p in model.head.named_parameters():
            if "preds" in name and name.endswith("weight"):
                p.normal_(0.0, 0.05)
    return model

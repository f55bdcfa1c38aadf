"""detflow.engine: loop with a toy detector, EMA math, parameter groups, schedules, checkpoints."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detflow.engine import checkpoint as ck
from detflow.engine.ema import ExpMomentumEMA, RampedEMA, build_ema
from detflow.engine.loop import TrainLoop, distill_alpha
from detflow.engine.optim import build_optimizer, param_groups
from detflow.engine.schedules import IterLRScheduler, LRSchedule, build_schedule
from detflow.engine.specs import EMASpec, OptimizerSpec, ScheduleSpec
from detmodels import Detections, Detector


class ToyDetector(Detector):
    """One conv level (stride 8): class logits pushed towards 1 where a box centre falls."""

    family, task = "toy", "bbox"

    def __init__(self, num_classes: int = 2):
        super().__init__(num_classes, strides=(8,))
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.cls = nn.Conv2d(8, num_classes, 1)
        self.box = nn.Conv2d(8, 4, 1)

    def forward(self, images):
        f = self.stem(images)
        return {"cls": [self.cls(f)], "box": [self.box(f)]}

    def loss(self, outputs, targets):
        cls = outputs["cls"][0]
        goal = torch.zeros_like(cls)
        for i, t in enumerate(targets):
            for b, lab in zip(t["boxes"], t["labels"]):
                cx, cy = int((b[0] + b[2]) / 16), int((b[1] + b[3]) / 16)
                goal[i, int(lab), cy, cx] = 1.0
        return {"loss_cls": nn.functional.binary_cross_entropy_with_logits(cls, goal),
                "loss_box": outputs["box"][0].pow(2).mean()}

    def decode(self, outputs):
        cls = outputs["cls"][0]
        n, c, h, w = cls.shape
        return torch.zeros(n, h * w, 4), cls.sigmoid().flatten(2).transpose(1, 2)

    def postprocess(self, outputs, image_sizes, score_thr=0.05, nms_iou=0.6, max_det=100, scale_factors=None):
        return [Detections.empty() for _ in image_sizes]


def _batches(n_batches: int = 4, batch: int = 2, size: int = 32):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        images = torch.randn(batch, 3, size, size, generator=g)
        targets = [{"boxes": torch.tensor([[4.0, 4.0, 12.0, 12.0]]), "labels": torch.tensor([1])} for _ in range(batch)]
        out.append((images, targets, [{"image_id": 0}] * batch))
    return out


def _loop(model, epochs=3, ema=True, **kw):
    spec = OptimizerSpec(name="adamw", lr=0.05, weight_decay=0.05, momentum=0.9, nesterov=False, base_batch=256,
                         scale_lr_by_batch=False)
    schedule = ScheduleSpec(name="flat_cosine", warmup_iters=0, warmup_epochs=0.0, min_lr_ratio=0.05, flat_fraction=0.5)
    opt = build_optimizer(model, spec, total_batch=2)
    sched = IterLRScheduler(opt, build_schedule(schedule, epochs=epochs, iters_per_epoch=4))
    return TrainLoop(model, opt, sched, ema=ExpMomentumEMA(model) if ema else None, max_epochs=epochs, **kw)


def test_loop_loss_decreases_and_reports_times():
    torch.manual_seed(0)
    model = ToyDetector()
    loop = _loop(model, epochs=3)
    data = _batches()
    first = loop.train_epoch(data, 0).summary()
    for e in (1, 2):
        last = loop.train_epoch(data, e).summary()
    assert last["train/loss"] < 0.7 * first["train/loss"]
    assert loop.step == 12 and loop.ema.updates == 12
    assert first["train/images_per_s"] > 0 and 0 <= first["train/data_wait_fraction"] <= 1
    assert set(first) >= {"train/loss_cls", "train/loss_box", "train/lr", "train/step_time_s"}


class _SleepyDataset(torch.utils.data.Dataset):
    """Eight 32 px toy samples; ``__getitem__`` sleeps ``delay`` seconds (a slow decode)."""

    def __init__(self, delay: float):
        self.delay = delay

    def __len__(self):
        return 8

    def __getitem__(self, i):
        import time

        time.sleep(self.delay)
        g = torch.Generator().manual_seed(i)
        return (torch.randn(3, 32, 32, generator=g),
                {"boxes": torch.tensor([[4.0, 4.0, 12.0, 12.0]]), "labels": torch.tensor([1])}, {"image_id": i})


def _collate(batch):
    images, targets, metas = zip(*batch)
    return torch.stack(images), list(targets), list(metas)


def _slow_step(loop, seconds):
    """Make every optimisation step that ``train_epoch`` runs take at least ``seconds`` (a model of
    known cost)."""
    import time

    step = loop._step

    def slow(*a, **kw):
        time.sleep(seconds)
        return step(*a, **kw)

    loop._step = slow


@pytest.mark.parametrize("delay,step_s", [(0.15, 0.0), (0.0, 0.2)])
def test_loop_data_wait_fraction(delay, step_s):
    """The loader's time is data wait, the step's is not, and the fraction is data / (data + step).
    Sleeps give lower bounds (a loaded machine only adds time): a loader sleeping 4 × ``delay`` per
    batch waits at least that; a step sleeping ``step_s`` takes at least that, while its free
    loader (4 tiny tensors) waits far less than the step's sleep."""
    torch.manual_seed(0)
    loop = _loop(ToyDetector(), epochs=1, ema=False)
    _slow_step(loop, step_s)
    loader = torch.utils.data.DataLoader(_SleepyDataset(delay), batch_size=4, collate_fn=_collate)
    s = loop.train_epoch(loader, 0).summary()
    data, step = s["train/data_time_s"], s["train/step_time_s"]
    assert data >= 4 * delay * 0.99 and step >= step_s * 0.99, (data, step)
    assert s["train/data_wait_fraction"] == pytest.approx(data / (data + step))
    if step_s:
        assert data < step_s, (data, step)  # the step's sleep is not counted as waiting for data
    assert "train/images_per_s" in s


def test_loop_max_steps_and_distillation_terms():
    model, teacher = ToyDetector(), ToyDetector().eval()
    loop = _loop(model, epochs=2, ema=False, teacher=teacher, max_steps_per_epoch=2)
    stats = loop.train_epoch(_batches(), 0)
    assert stats.steps == 2
    assert {"loss_kd_cls", "loss_kd_box"} <= set(stats.losses)
    # KD terms are excluded from the detection loss total
    s = stats.summary()
    assert s["train/loss"] == pytest.approx(s["train/loss_cls"] + s["train/loss_box"])


def test_non_finite_loss_raises():
    from detflow.errors import RuntimeFailure

    model = ToyDetector()
    loop = _loop(model, ema=False)
    images, targets, metas = _batches(1)[0]
    with pytest.raises(RuntimeFailure, match="non-finite loss"):
        loop.train_step(images * float("nan"), targets, 0)


class _WindowedLoop(TrainLoop):
    """The loop as it runs on CUDA: loss terms read every 3 steps, not every step."""

    def sync_every(self) -> int:
        return 3


def _epoch_with(loop_cls, batches):
    torch.manual_seed(0)
    model = ToyDetector()
    loop = _loop(model, ema=False)
    loop.__class__ = loop_cls
    return loop.train_epoch(batches, 0), model


def test_windowed_loss_reads_sum_the_same_terms_and_train_the_same_weights():
    batches = _batches(4)
    every_step, m1 = _epoch_with(TrainLoop, batches)
    windowed, m3 = _epoch_with(_WindowedLoop, batches)
    assert windowed.steps == every_step.steps == 4  # windows of 3 and 1: the last window is read too
    assert set(windowed.losses) == set(every_step.losses)
    for k, v in every_step.losses.items():
        assert windowed.losses[k] == pytest.approx(v, rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m3.state_dict().values()))


def test_uint8_batches_are_normalised_on_the_device_like_packed_floats():
    """Training batches arrive uint8 (``PackDetInputs(normalize=False)``); the loop normalises them
    with the model's InputSpec: the same losses and weights as the float batches packed normalised."""
    from detflow.data import normalize_images

    g = torch.Generator().manual_seed(0)
    raw = [(torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8), t, m) for _, t, m in _batches(4)]
    spec = ToyDetector().input_spec
    floats = [(normalize_images(x, spec), t, m) for x, t, m in raw]
    assert floats[0][0].dtype == torch.float32 and not torch.equal(floats[0][0], raw[0][0].float())
    from_uint8, m1 = _epoch_with(TrainLoop, raw)
    from_float, m2 = _epoch_with(TrainLoop, floats)
    assert from_uint8.losses == from_float.losses
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_windowed_loss_read_names_the_steps_of_a_non_finite_loss():
    from detflow.errors import RuntimeFailure

    batches = _batches(4)
    images, targets, metas = batches[1]
    batches[1] = (images * float("nan"), targets, metas)
    with pytest.raises(RuntimeFailure, match="non-finite loss at epoch 0 steps 0–2"):
        _epoch_with(_WindowedLoop, batches)


def test_distill_alpha_cosine():
    assert distill_alpha(0, 10) == pytest.approx(1.0)
    assert distill_alpha(5, 10) == pytest.approx(1 - 0.99 * 0.5)
    assert distill_alpha(10, 10) == pytest.approx(0.01)
    assert distill_alpha(7, 10, "none") == 1.0


# ----------------------------------------------------------------------------- EMA
def test_exp_momentum_ema_matches_hand_computation():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ExpMomentumEMA(model, momentum=0.1, gamma=2.0)
    ema.update(model)  # first update copies
    assert float(ema.module.weight) == pytest.approx(1.0)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # steps=1: mu = 0.9*exp(-2/2) + 0.1
    mu = 0.9 * math.exp(-1.0) + 0.1
    assert float(ema.module.weight) == pytest.approx((1 - mu) * 1.0 + mu * 3.0)
    ema.update(model)  # steps=2
    mu2 = 0.9 * math.exp(-1.5) + 0.1
    prev = (1 - mu) + mu * 3.0
    assert float(ema.module.weight) == pytest.approx((1 - mu2) * prev + mu2 * 3.0)


def test_ramped_ema_matches_hand_computation_and_copies_int_buffers():
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    ema = RampedEMA(model, decay=0.9, ramp=1.0)
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1.0))
    assert float(ema.module[0].weight) == pytest.approx(d * 0.0 + (1 - d) * 2.0)
    assert int(ema.module[1].num_batches_tracked) == 7
    ema.update(model)
    d2 = 0.9 * (1 - math.exp(-2.0))
    assert float(ema.module[0].weight) == pytest.approx(d2 * (1 - d) * 2.0 + (1 - d2) * 2.0)


# ----------------------------------------------------------------------------- optimiser
def test_param_groups_no_decay_on_norms_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1, bias=False), nn.LayerNorm(2))
    model[2].weight.requires_grad_(False)
    groups = {g["name"]: g for g in param_groups(model, 0.05)}
    assert [p.shape for p in groups["decay"]["params"]] == [torch.Size([4, 3, 3, 3])]
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    assert len(groups["no_decay"]["params"]) == 5  # conv bias, bn w+b, ln w+b


def test_build_optimizer_scales_lr_and_sgd_nesterov():
    model = nn.Linear(2, 2)
    adamw = OptimizerSpec(name="adamw", lr=0.004, weight_decay=0.05, momentum=0.9, nesterov=False, base_batch=256,
                          scale_lr_by_batch=True)
    opt = build_optimizer(model, adamw, total_batch=16)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == pytest.approx(0.004 * 16 / 256)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.param_groups[0]["weight_decay"] == 0.05
    sgd_spec = OptimizerSpec(name="sgd", lr=0.01, weight_decay=5e-4, momentum=0.937, nesterov=True, base_batch=64,
                             scale_lr_by_batch=False)
    sgd = build_optimizer(model, sgd_spec, total_batch=8)
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.937 and sgd.param_groups[0]["lr"] == 0.01


def test_build_ema_from_spec():
    model = nn.Linear(2, 2)
    assert build_ema(model, EMASpec(enabled=False, kind="exp_momentum")) is None
    exp = build_ema(model, EMASpec(enabled=True, kind="exp_momentum", momentum=0.001, gamma=10.0))
    assert isinstance(exp, ExpMomentumEMA) and (exp.momentum, exp.gamma) == (0.001, 10.0)
    ramped = build_ema(model, EMASpec(enabled=True, kind="ramped", decay=0.99, gamma=5.0))
    assert isinstance(ramped, RampedEMA) and (ramped.decay, ramped.ramp) == (0.99, 5.0)


# ----------------------------------------------------------------------------- schedules
def test_flat_cosine_values():
    s = LRSchedule("flat_cosine", total_iters=100, warmup_iters=10, warmup_start=1e-5, min_lr_ratio=0.05, flat_fraction=0.5)
    assert s.factor(0) == pytest.approx(1e-5)
    assert s.factor(5) == pytest.approx(1e-5 + (1 - 1e-5) * 0.5)
    assert s.factor(10) == s.factor(50) == 1.0
    assert s.factor(75) == pytest.approx(0.05 + 0.95 * 0.5)
    assert s.factor(100) == pytest.approx(0.05)


def test_cosine_step_and_scheduler_state():
    cos = LRSchedule("cosine", total_iters=10, warmup_iters=0, min_lr_ratio=0.01)
    assert cos.factor(5) == pytest.approx(1 + (0.01 - 1) * 0.5)
    step = LRSchedule("step", total_iters=100, milestones=(0.5, 0.9), gamma=0.1)
    assert [step.factor(i) for i in (49, 50, 89, 90)] == pytest.approx([1, 0.1, 0.1, 0.01])
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    sch = IterLRScheduler(opt, cos)
    for _ in range(5):
        sch.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * cos.factor(5))
    opt2 = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    sch2 = IterLRScheduler(opt2, cos)
    sch2.load_state_dict(sch.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_build_schedule_caps_warmup_for_short_runs():
    spec = ScheduleSpec(name="cosine", warmup_iters=1000, warmup_epochs=3.0, min_lr_ratio=0.01, flat_fraction=0.0,
                        warmup_start=0.0)
    s = build_schedule(spec, epochs=2, iters_per_epoch=5)  # paper: max(3 epochs, 1000 it)
    assert s.warmup_iters == 3 and s.warmup_start == 0.0 and s.total_iters == 10 and s.min_lr_ratio == 0.01
    long = build_schedule(spec, epochs=300, iters_per_epoch=100)
    assert long.warmup_iters == 1000 and long.name == "cosine"
    flat = build_schedule(ScheduleSpec(name="flat_cosine", warmup_iters=1000, warmup_epochs=0.0, min_lr_ratio=0.05,
                                       flat_fraction=0.5), epochs=300, iters_per_epoch=100)
    assert flat.warmup_start == 1e-5 and flat.flat_fraction == 0.5


def test_burn_in_warmup_rises_as_progress_to_the_fourth():
    """YOLOv3 / ASFF burn-in: lr · (it / warm-up)^4 from 0 (architectures.md §5: 5 epochs)."""
    s = LRSchedule("flat_cosine", total_iters=1000, warmup_iters=100, warmup_start=0.0, warmup_power=4.0,
                   flat_fraction=0.5)
    assert s.factor(0) == 0.0
    assert s.factor(50) == pytest.approx(0.5**4)  # 1/16 of the lr half-way (linear: 1/2)
    assert s.factor(100) == s.factor(499) == 1.0


def test_recipe_warmups_are_the_references():
    from detflow.config.train import RecipeConfig
    from detflow.engine.recipes import build_recipe

    def sched(recipe: str):
        spec = build_recipe(RecipeConfig(name=recipe), size="any", image_size=320, epochs=300).schedule
        return build_schedule(spec, epochs=300, iters_per_epoch=100)

    asff, retina, yolov6 = sched("yolov3_asff"), sched("retinanet"), sched("yolov6")
    assert (asff.name, asff.warmup_iters, asff.warmup_power, asff.warmup_start) == ("flat_cosine", 500, 4.0, 0.0)
    assert asff.factor(20 * 100 - 1) == 1.0 and asff.factor(21 * 100) < 1.0  # flat to epoch 20, then cosine
    assert (retina.warmup_iters, retina.warmup_start, retina.warmup_power) == (2000, 0.0067, 1.0)
    assert (yolov6.warmup_start, yolov6.warmup_power) == (0.0, 1.0)


# ----------------------------------------------------------------------------- checkpoints
def _save(path, epoch=0):
    return ck.save_checkpoint(path, state={"model": {"w": torch.ones(2)}, "epoch": epoch, "rng": ck.rng_state()},
                              config={"name": "x"}, meta={"epoch": epoch})


def test_checkpoint_roundtrip_with_numpy_and_rng(tmp_path):
    import numpy as np

    cache = {"images": [np.arange(6, dtype=np.uint8).reshape(2, 3)], "n": np.int64(3)}
    torch.manual_seed(1)
    rng = ck.rng_state()
    expected = torch.rand(3)
    np_expected = np.random.rand()
    p = ck.save_checkpoint(tmp_path / "epoch_0001", state={"data": cache, "rng": rng}, config={"a": 1}, meta={"epoch": 1})
    state = ck.load_checkpoint_state(p)
    assert state["data"]["images"][0].dtype == np.uint8 and state["data"]["n"] == 3
    np.testing.assert_array_equal(state["data"]["images"][0], cache["images"][0])
    ck.set_rng_state(state["rng"])
    assert torch.equal(torch.rand(3), expected) and np.random.rand() == np_expected
    assert ck.read_meta(p) == {"epoch": 1}


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    good = _save(tmp_path / "epoch_0001", 1)

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", crash)
    with pytest.raises(OSError):
        _save(tmp_path / "epoch_0002", 2)
    with pytest.raises(OSError):
        _save(good, 3)  # overwriting: the old one must survive
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_0001"]
    assert ck.read_meta(good) == {"epoch": 1}
    # a half-written directory is never listed as a checkpoint
    (tmp_path / "epoch_0003").mkdir()
    (tmp_path / "epoch_0003" / "model.pt").write_bytes(b"partial")
    assert ck.list_checkpoints(tmp_path) == [good]


def test_keep_last_k_and_best_protected(tmp_path):
    paths = [_save(tmp_path / f"epoch_{e:04d}", e) for e in range(5)]
    best = ck.publish_checkpoint(paths[1], tmp_path / "best")
    deleted = ck.prune_checkpoints(tmp_path, keep_last=2, protect=(paths[0],))
    assert sorted(p.name for p in deleted) == ["epoch_0001", "epoch_0002"]
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["epoch_0000", "epoch_0003", "epoch_0004"]
    assert ck.is_checkpoint(best) and ck.read_meta(best)["epoch"] == 1
    ck.publish_checkpoint(paths[4], best)  # replace best atomically
    assert ck.read_meta(best)["epoch"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "epoch_0000", "epoch_0003", "epoch_0004"]


def test_loop_state_roundtrip_resumes_identically(tmp_path):
    torch.manual_seed(0)
    a = ToyDetector()
    loop_a = _loop(a, epochs=2)
    data = _batches()
    loop_a.train_epoch(data, 0)
    ck.save_checkpoint(tmp_path / "epoch_0000", state=loop_a.state_dict(), config={}, meta={})
    b = ToyDetector()
    loop_b = _loop(b, epochs=2)
    loop_b.load_state_dict(ck.load_checkpoint_state(tmp_path / "epoch_0000"))
    sa, sb = loop_a.train_epoch(data, 1), loop_b.train_epoch(data, 1)
    assert sa.losses["loss_cls"] == pytest.approx(sb.losses["loss_cls"], rel=1e-5)
    assert loop_b.scheduler.iter == 8 and loop_b.ema.updates == 8

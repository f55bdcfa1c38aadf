"""The restricted unpickler: reads tensors out of pickled-module checkpoints, never runs pickled code."""
import collections
import os
import pickle
import textwrap
import warnings

import pytest
import torch

from detmodels import create_model, load_official_weights
from detmodels.families.yolov6_weights import reference_key_map
from detmodels.safe_unpickle import UnsafePickleError, load_restricted, read_module_state_dict


class RunsShell:
    """Unpickling this would run a shell command (the classic malicious checkpoint)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CallsSomething:
    """Unpickling this would call an ordinary function of a module the reader does not deny by name."""

    def __reduce__(self):
        return textwrap.dedent, ("  x",)


class FakeModule:
    """A plain class with the attribute layout ``torch.nn.Module`` pickles (no torch.nn involved)."""

    def __init__(self, params=(), buffers=(), modules=(), non_persistent=()):
        self.training = False
        self._parameters = collections.OrderedDict(params)
        self._buffers = collections.OrderedDict(buffers)
        self._non_persistent_buffers_set = set(non_persistent)
        self._modules = collections.OrderedDict(modules)
        self.stride = torch.tensor([8.0, 16.0, 32.0])  # a plain tensor attribute, not state


def test_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": RunsShell(marker)}, path)
    with pytest.raises(UnsafePickleError, match="system"):
        load_restricted(path)
    with pytest.raises(pickle.UnpicklingError):
        load_official_weights(create_model("yolov6_n", num_classes=1), path, source="yolov6")
    assert not marker.exists()


def test_refuses_calls_of_any_unlisted_global(tmp_path):
    path = tmp_path / "call.pt"
    torch.save({"model": CallsSomething()}, path)
    with pytest.raises(UnsafePickleError, match="textwrap.dedent"):
        load_restricted(path)


def test_reads_fake_module_without_importing_it(tmp_path):
    weight = torch.nn.Parameter(torch.arange(6, dtype=torch.float16).reshape(2, 3))
    base = torch.arange(10, dtype=torch.float32)
    child = FakeModule(params=[("weight", weight), ("bias", None)],
                       buffers=[("running_mean", base[2:5]), ("cache", torch.ones(2))], non_persistent=["cache"])
    alpha = torch.nn.Parameter(torch.tensor([0.5]))
    root = FakeModule(params=[("alpha", alpha)], modules=[("conv", child), ("gone", None)])
    path = tmp_path / "fake.pt"
    torch.save({"model": root, "ema": None, "epoch": 7}, path)
    sd = read_module_state_dict(path)
    assert list(sd) == ["alpha", "conv.weight", "conv.running_mean"]
    assert sd["conv.weight"].dtype == torch.float16 and sd["conv.weight"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert sd["conv.running_mean"].tolist() == [2.0, 3.0, 4.0]  # a view into a shared storage
    assert sd["alpha"].tolist() == [0.5]
    obj = load_restricted(path)
    assert type(obj["model"]).__name__ == "FakeModule" and type(obj["model"]) is not FakeModule


def test_plain_state_dict_and_ema_preference(tmp_path):
    torch.save({"a.weight": torch.ones(2)}, tmp_path / "plain.pt")
    assert list(read_module_state_dict(tmp_path / "plain.pt")) == ["a.weight"]
    torch.save({"model": {"w": torch.zeros(1)}, "ema": {"w": torch.ones(1)}}, tmp_path / "both.pt")
    assert read_module_state_dict(tmp_path / "both.pt")["w"].item() == 1.0
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"model": 1}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        read_module_state_dict(tmp_path / "legacy.pt")


def _fake_tree(state):
    """Nest a flat reference state dict into FakeModules (weights/bias/alpha → params, the rest → buffers)."""
    tree = {}
    for key, value in state.items():
        node = tree
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def build(node):
        params = [(k, torch.nn.Parameter(v, requires_grad=False)) for k, v in node.items()
                  if isinstance(v, torch.Tensor) and k in ("weight", "bias", "alpha")]
        buffers = [(k, v) for k, v in node.items() if isinstance(v, torch.Tensor) and k not in dict(params)]
        modules = [(k, build(v)) for k, v in node.items() if isinstance(v, dict)]
        return FakeModule(params, buffers, modules)

    return build(tree)



def test_released_style_checkpoint_loads_into_yolov6(tmp_path, one_thread):
    src = create_model("yolov6_n", num_classes=2).eval()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    mapping = reference_key_map(src)
    ref_state = {mapping[k]: v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()}
    torch.save({"model": _fake_tree(ref_state), "ema": None}, tmp_path / "yolov6n.pt")
    dst = load_official_weights(create_model("yolov6_n", num_classes=2), tmp_path / "yolov6n.pt", source="yolov6")
    for key, value in dst.state_dict().items():
        assert torch.equal(value, src.state_dict()[key].half().to(value.dtype)), key


class Settings(dict):
    """A dict subclass (like addict.Dict configs some checkpoints carry)."""


def test_dict_subclass_entries_do_not_break_loading(tmp_path):
    torch.save({"model": FakeModule(params=[("w", torch.nn.Parameter(torch.ones(1)))]), "cfg": Settings(lr=0.01)},
               tmp_path / "cfg.pt")
    assert list(read_module_state_dict(tmp_path / "cfg.pt")) == ["w"]
    assert load_restricted(tmp_path / "cfg.pt")["cfg"].items == {"lr": 0.01}


# --- memory bounds: oversized / overlapping tensors, byte caps, compressed members -------------------------


class ForgedView:
    """Pickles as a tensor view ``(size, stride)`` over a 4-element float storage, whatever that asks for."""

    def __init__(self, size, stride):
        self.size, self.stride = size, stride

    def __reduce__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage is deprecated, but it is what torch.save pickles
            storage = torch.ones(4).storage()
        return torch._utils._rebuild_tensor_v2, (storage, 0, self.size, self.stride, False, collections.OrderedDict())


def _released(tmp_path, name, **buffers):
    """A YOLOv6-release-style checkpoint (a pickled module object) holding ``buffers``."""
    path = tmp_path / name
    torch.save({"model": FakeModule(buffers=list(buffers.items())), "ema": None}, path)
    return path


@pytest.mark.parametrize("size, stride", [((1_000_000,), (0,)), ((2, 3), (0, 1)), ((10**12,), (1,)), ((3,), (2,))],
                         ids=["stride0-expand", "overlapping-rows", "huge-declared-size", "past-the-end"])
def test_refuses_tensor_larger_than_its_storage(tmp_path, size, stride):
    path = _released(tmp_path, "big.pt", big=ForgedView(size, stride))
    with pytest.raises(UnsafePickleError, match="exceeds its storage"):
        load_restricted(path)
    with pytest.raises(UnsafePickleError, match="exceeds its storage"):
        read_module_state_dict(path)


def test_views_inside_their_storage_still_load(tmp_path):
    path = _released(tmp_path, "ok.pt", a=ForgedView((2, 2), (2, 1)), b=ForgedView((2,), (2,)))
    sd = read_module_state_dict(path)
    assert sd["a"].shape == (2, 2) and sd["b"].tolist() == [1.0, 1.0]


def test_caps_bytes_per_tensor_and_in_total(tmp_path, monkeypatch):
    import detmodels.safe_unpickle as su

    path = _released(tmp_path, "caps.pt", a=torch.zeros(1000), b=torch.zeros(1000), c=torch.zeros(1000))
    assert len(read_module_state_dict(path)) == 3
    monkeypatch.setattr(su, "MAX_TENSOR_BYTES", 3999)
    with pytest.raises(UnsafePickleError, match="4000 bytes"):
        load_restricted(path)
    monkeypatch.setattr(su, "MAX_TENSOR_BYTES", 4000)
    monkeypatch.setattr(su, "MAX_TOTAL_BYTES", 20_000)  # 3 storages + 3 copies = 24000 bytes
    with pytest.raises(UnsafePickleError, match="in all"):
        load_restricted(path)


def _rezip(src_path, dst_path, compression, transform=lambda name, data: data):
    """A copy of the zip archive ``src_path`` with ``compression`` and each member's bytes transformed."""
    import zipfile

    with zipfile.ZipFile(src_path) as src, zipfile.ZipFile(dst_path, "w", compression) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, transform(info.filename, src.read(info.filename)))
    return dst_path


def test_refuses_compressed_members(tmp_path):
    import zipfile

    plain = _released(tmp_path, "plain.pt", w=torch.zeros(8))
    packed = _rezip(plain, tmp_path / "packed.pt", zipfile.ZIP_DEFLATED)
    with pytest.raises(UnsafePickleError, match="compressed"):
        load_restricted(packed)
    torch.save({"w": torch.zeros(8)}, plain)  # a plain state dict: torch.load itself would inflate it
    packed = _rezip(plain, tmp_path / "packed.pt", zipfile.ZIP_DEFLATED)
    with pytest.raises(UnsafePickleError, match="compressed"):
        read_module_state_dict(packed)


def test_refuses_storage_whose_bytes_disagree_with_its_declared_size(tmp_path):
    import zipfile

    plain = _released(tmp_path, "plain.pt", w=torch.zeros(8))
    forged = _rezip(plain, tmp_path / "forged.pt", zipfile.ZIP_STORED,
                    lambda name, data: data + b"\0" * 64 if "/data/" in name else data)
    with pytest.raises(UnsafePickleError, match="declared"):
        load_restricted(forged)

"""Read tensors out of a checkpoint that pickles whole ``nn.Module`` objects, without importing or
running any of the pickled code (e.g. meituan/YOLOv6 releases: ``{"model": <Model>, "ema": <Model>}``).

The restricted unpickler rebuilds only tensors, parameters, ``OrderedDict``/sets and a few inert torch
values. Every other class named in the pickle becomes an inert *stub*: it can be instantiated the way
pickle builds plain objects (``NEWOBJ`` + ``BUILD``, which only store the attribute dict), but calling
it — what ``REDUCE`` does, and how a malicious pickle runs code — raises :class:`UnsafePickleError`.
Globals of dangerous modules (``os``, ``subprocess``, ``builtins.eval``, …) are refused outright.

Memory is bounded too: archive members must be stored uncompressed and match the element count the
pickle declares; a storage may hold at most :data:`MAX_TENSOR_BYTES`; a tensor may not span more
bytes than its storage holds (no stride-0 / overlapping views blown up by ``clone``) nor reach past
it; storages read plus tensors built may total at most :data:`MAX_TOTAL_BYTES`.

>>> sd = read_module_state_dict("yolov6s.pt")            # doctest: +SKIP
>>> sorted(sd)[:2]                                          # doctest: +SKIP
['backbone.ERBlock_2.0.rbr_1x1.bn.bias', 'backbone.ERBlock_2.0.rbr_1x1.bn.num_batches_tracked']
"""
from __future__ import annotations

import collections
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["UnsafePickleError", "load_restricted", "module_state_dict", "read_module_state_dict",
           "MAX_TENSOR_BYTES", "MAX_TOTAL_BYTES"]

MAX_TENSOR_BYTES = 1 << 30  # one storage / one tensor: 1 GiB (the largest YOLOv6 tensor is a few MiB)
MAX_TOTAL_BYTES = 4 << 30  # all storages read + all tensors rebuilt by one load: 4 GiB

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_DTYPE_NAMES = {"float16", "float32", "float64", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
                "half", "float", "double", "long", "int"}
_DENIED_MODULES = {"os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "importlib", "shutil",
                   "socket", "pickle", "_pickle", "marshal", "runpy", "code", "codeop", "ctypes", "pty", "io",
                   "functools", "operator", "types", "webbrowser", "multiprocessing", "threading", "signal",
                   "tempfile", "pathlib", "glob", "inspect", "pdb", "torch.hub", "torch.jit", "torch.serialization"}


class UnsafePickleError(pickle.UnpicklingError):
    """The checkpoint asks to run code (or uses something the restricted reader does not allow)."""


class _StubMeta(type):
    def __call__(cls, *args: Any, **kwargs: Any):
        raise UnsafePickleError(f"refusing to call {cls.__ref_name__} while unpickling (would run code)")


class PickledObject(metaclass=_StubMeta):
    """An inert stand-in for an object of a pickled class; ``state`` holds what BUILD gave it."""

    __ref_name__ = "?"

    def __new__(cls, *args: Any, **kwargs: Any):  # used by NEWOBJ only; never runs pickled code
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}
        object.__setattr__(self, "state", state)

    # dict / list subclasses are filled by SETITEMS / APPENDS: keep the data, run nothing.
    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("elements", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("elements", []).extend(values)

    def __repr__(self) -> str:
        return f"<pickled {self.__ref_name__}>"


class _Opaque:
    """Result of an allowed but irrelevant call (numpy scalars, bound-method lookups)."""

    def __init__(self, what: str):
        self.what = what


def _stub_class(module: str, name: str) -> type:
    return _StubMeta(name, (PickledObject,), {"__ref_name__": f"{module}.{name}", "__module__": "detmodels.pickled"})


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """``copyreg._reconstructor`` for stubs only (protocol < 2 object construction)."""
    if isinstance(cls, _StubMeta) and base is object:
        return cls.__new__(cls)
    raise UnsafePickleError(f"refusing copyreg._reconstructor({cls!r}, {base!r})")


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list, torch.Size)) or len(value) > 64 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise UnsafePickleError(f"refusing tensor with {what} {value!r}")
    return tuple(value)


def _rebuild_parameter(data: Tensor, *_ignored: Any) -> Tensor:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, records: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._zip, self._prefix, self._storages = records, prefix, {}
        self._total_bytes = 0

    def _charge(self, nbytes: int, what: str) -> None:
        if nbytes > MAX_TENSOR_BYTES:
            raise UnsafePickleError(f"refusing {what} of {nbytes} bytes (limit {MAX_TENSOR_BYTES})")
        self._total_bytes += nbytes
        if self._total_bytes > MAX_TOTAL_BYTES:
            raise UnsafePickleError(f"refusing checkpoint: its tensors exceed {MAX_TOTAL_BYTES} bytes in all")

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> Tensor:
        """``torch._utils._rebuild_tensor_v2`` with bounds: the view must lie inside its storage and
        hold no more bytes than the storage (a stride-0 view of a tiny storage is refused)."""
        if not isinstance(storage, Tensor):
            raise UnsafePickleError(f"refusing tensor over {type(storage).__name__} (expected a storage)")
        size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
        (offset,) = _int_tuple((offset,), "offset")
        if len(size) != len(stride):
            raise UnsafePickleError(f"refusing tensor with size {size} and stride {stride}")
        numel = math.prod(size)
        nbytes = numel * storage.element_size()
        extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if numel else offset
        if nbytes > storage.numel() * storage.element_size() or extent > storage.numel():
            raise UnsafePickleError(f"refusing tensor of size {size} (stride {stride}, offset {offset}): "
                                    f"it exceeds its storage of {storage.numel()} elements")
        self._charge(nbytes, "tensor")
        return torch.as_strided(storage, size, stride, offset).clone()

    def find_class(self, module: str, name: str) -> Any:  # noqa: C901 - one table of rules
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set")}:
            return set if name == "set" else frozenset
        if (module, name) == ("builtins", "getattr"):
            return lambda obj, attr, *default: _Opaque(f"getattr {attr}")
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch" and name in _DTYPE_NAMES:
            return getattr(torch, name)
        if module == "torch" and name in ("Size", "device"):
            return getattr(torch, name)
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstructor
        if module.split(".")[0] == "numpy" and name in ("scalar", "dtype", "_reconstruct", "ndarray"):
            return lambda *args, **kwargs: _Opaque(f"numpy.{name}")
        if module in _DENIED_MODULES or module.split(".")[0] in _DENIED_MODULES or module == "copyreg":
            raise UnsafePickleError(f"refusing global {module}.{name} in checkpoint")
        return _stub_class(module, name)

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafePickleError(f"unsupported persistent id {pid!r}")
        if len(pid) != 5:
            raise UnsafePickleError(f"unsupported persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype):
            raise UnsafePickleError(f"unsupported storage type {dtype!r}")
        if key not in self._storages:
            name = f"{self._prefix}data/{key}"
            try:
                info = self._zip.getinfo(name)
            except KeyError:
                raise UnsafePickleError(f"storage record {name!r} is missing from the archive") from None
            itemsize = torch.empty(0, dtype=dtype).element_size()
            if not isinstance(numel, int) or isinstance(numel, bool) or info.file_size != numel * itemsize:
                raise UnsafePickleError(f"storage {name!r}: {info.file_size} bytes in the archive, but "
                                        f"{numel!r} elements of {dtype} declared")
            self._charge(info.file_size, "storage")
            raw = bytearray(self._zip.read(name))
            self._storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self._storages[key]


def _refuse_compressed(zf: zipfile.ZipFile, path: Path) -> None:
    """torch.save stores members uncompressed; a compressed one could inflate far beyond the file (zip bomb)."""
    packed = [i.filename for i in zf.infolist() if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise UnsafePickleError(f"{path}: compressed archive members are not supported ({packed[0]})")


def load_restricted(path: str | Path) -> Any:
    """Unpickle a torch zip checkpoint with the restricted rules; module objects come back as stubs."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise UnsafePickleError(f"{path}: not a torch zip checkpoint (legacy torch.save format is not supported)")
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if not names:
            raise UnsafePickleError(f"{path}: no data.pkl record in the archive")
        prefix = names[0][: -len("data.pkl")]
        _refuse_compressed(zf, path)
        if f"{prefix}byteorder" in zf.namelist() and zf.read(f"{prefix}byteorder").strip() != b"little":
            raise UnsafePickleError(f"{path}: big-endian checkpoints are not supported")
        with zf.open(names[0]) as fh:
            return _RestrictedUnpickler(fh, zf, prefix).load()


def module_state_dict(obj: Any, prefix: str = "") -> "collections.OrderedDict[str, Tensor]":
    """Flatten a pickled module stub (its ``_parameters``, persistent ``_buffers``, ``_modules``) into a state dict."""
    out: collections.OrderedDict[str, Tensor] = collections.OrderedDict()
    if isinstance(obj, dict) and all(isinstance(v, Tensor) for v in obj.values()):
        out.update((prefix + k, v) for k, v in obj.items())
        return out
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        raise UnsafePickleError(f"expected a pickled module at {prefix or '<root>'!r}, got {type(obj).__name__}")
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, Tensor) and not (group == "_buffers" and name in skip):
                out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


def read_module_state_dict(path: str | Path, keys: tuple[str, ...] = ("ema", "model", "state_dict")
                           ) -> "collections.OrderedDict[str, Tensor]":
    """State dict from ``path``: a plain state dict, ``{key: state_dict}``, or ``{key: pickled module}``.

    Plain files are read with ``torch.load(weights_only=True)``; files that pickle modules fall back to
    :func:`load_restricted`. The first non-empty entry of ``keys`` wins (EMA weights first).
    """
    if zipfile.is_zipfile(path):  # torch.load would inflate compressed members: refuse them first
        with zipfile.ZipFile(path) as zf:
            _refuse_compressed(zf, Path(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        obj = load_restricted(path)
    except (RuntimeError, EOFError) as exc:
        raise UnsafePickleError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    if isinstance(obj, dict) and not all(isinstance(v, Tensor) for v in obj.values()):
        for key in keys:
            if obj.get(key) is not None:
                return module_state_dict(obj[key])
        raise UnsafePickleError(f"{path}: none of the entries {keys} holds weights (found {sorted(obj)})")
    return module_state_dict(obj)

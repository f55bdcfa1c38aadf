"""Shared parts of QAT and PTQ: the torchao PT2E quantizer, data batches, int8 ONNX export, the output directory.

Flow (torchao PT2E): re-parameterise → ``torch.export`` the raw forward
(``images`` → per-level head outputs) → ``prepare_pt2e`` / ``prepare_qat_pt2e`` with the
XNNPACK-style :func:`conv_qdq_quantizer` (or torchao's ``X86InductorQuantizer``) → calibrate or
fine-tune → ``convert_pt2e`` → wrap with the float ``decode`` (box decoding and any DFL
projection stay float) → ``torch.onnx.export(dynamo=True)``, which writes QuantizeLinear /
DequantizeLinear pairs around int8 weights and activations (the QDQ format TensorRT consumes).

Output directory (``QuantResult.checkpoint``)::

    OUT/model.int8.onnx   QDQ graph: images → boxes, scores (sidecar model.int8.json)
    OUT/model.int8.pt2    the converted PT2E program (torch backend), when it could be saved
    OUT/model.int8.pt2.sha256  its SHA-256, written by detflow when it saved the program: the
                          program is only ever loaded when it matches (:func:`load_torch_program`)
    OUT/meta.json         the source checkpoint's meta + {"quantization": {...}}
    OUT/config.yaml       the source checkpoint's resolved TrainConfig (when there is one)
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import hmac
import io
import itertools
import json
import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_write
from ..errors import RuntimeFailure, UserInputError
from ..export.onnx import (
    ModelSource, compare_onnx_to_torch, deploy_info, export_graph, graph_outputs_info, ort_session, output_names_of,
    write_sidecar,
)

__all__ = [
    "QuantResult", "Batch", "conv_qdq_quantizer", "QUANTIZER_STYLES", "build_quantizer", "resolve_skip_layers",
    "iter_batches", "export_program", "FEATURES_KEY", "split_features",
    "QuantDeployModule", "export_int8", "count_qdq", "write_quant_dir", "fp32_reference_diff",
    "save_torch_program", "load_torch_program", "INT8_PT2", "PT2_DIGEST_SUFFIX",
]

log = logging.getLogger(__name__)

INT8_ONNX = "model.int8.onnx"
INT8_PT2 = "model.int8.pt2"
PT2_DIGEST_SUFFIX = ".sha256"  # model.int8.pt2.sha256: "<hex digest>  model.int8.pt2"
Batch = tuple[Tensor, list[dict], list[dict]]  # images N×3×H×W, targets, metas
FEATURES_KEY = "feats"  # raw outputs' key of the neck features (feature distillation), never decoded


def split_features(outputs: Any) -> tuple[Any, list[Tensor] | None]:
    """``(raw head outputs without the features, the features or None)`` of a ``forward`` output dict."""
    if not isinstance(outputs, dict) or FEATURES_KEY not in outputs:
        return outputs, None
    raw = {k: v for k, v in outputs.items() if k != FEATURES_KEY}
    return raw, list(outputs[FEATURES_KEY])


@dataclasses.dataclass
class QuantResult:
    """What QAT/PTQ produced: ``onnx_path`` (int8 QDQ graph), ``checkpoint`` (the output directory,
    see the module docstring) and ``metrics`` (path used, diffs, QDQ node counts, losses)."""

    onnx_path: str
    checkpoint: str
    metrics: dict[str, Any]


def resolve_skip_layers(model: nn.Module, skip_layers: Sequence[str]) -> list[str]:
    """Module names kept in float: ``skip_layers`` (exact names or fnmatch globs such as ``head.cls*``),
    the model's ``quant_float_modules`` attribute if it declares one, and any module whose name
    contains ``dfl`` (the DFL projection).

    Raises:
        UserInputError: a pattern matching no module.
    """
    names = [n for n, _ in model.named_modules() if n]
    keep: list[str] = []
    for pattern in skip_layers:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            close = ", ".join(names[:8])
            raise UserInputError(f"quantization skip_layers: {pattern!r} matches no module "
                                 f"(names look like: {close}, …)")
        keep += hits
    keep += list(getattr(model, "quant_float_modules", ()))
    keep += [n for n in names if "dfl" in n.lower()]
    outermost = [n for n in dict.fromkeys(keep) if not any(n.startswith(p + ".") for p in keep if p != n)]
    return outermost


def _is_conv(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and node.target == torch.ops.aten.conv2d.default


def _nodes_feeding_a_conv(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """Nodes from which some conv2d is reachable downstream (graph nodes are in topological order)."""
    feeds: set[torch.fx.Node] = set()
    for node in reversed(list(graph.nodes)):
        if any(_is_conv(user) or user in feeds for user in node.users):
            feeds.add(node)
    return feeds


def conv_qdq_quantizer(float_modules: Sequence[str] = (), *, is_qat: bool = False):
    """An XNNPACK-style PT2E quantizer (``ConvQDQQuantizer``) for a QDQ graph: every ``conv2d`` gets a quantised input
    (uint8, per tensor), int8 per-channel symmetric weights and a quantised *output* (before the
    activation), bias left float. ONNX Runtime then fuses each DQ→Conv→Q into ``QLinearConv`` and
    TensorRT runs the convs in INT8; activations (SiLU …) stay float between a DQ and the next Q.
    The prediction convs (no conv downstream: class logits, box regressions) keep a float output,
    so the head's predictions are never requantised to 8 bits.

    Observers / fake-quantizers are those of torchao's x86 default config (PTQ: histogram for
    activations, per-channel min-max for weights; QAT: fused moving-average fake-quant).
    Convs inside ``float_modules`` are left unannotated (float). torchao is imported lazily.
    """
    from torchao.quantization.pt2e.quantizer.quantizer import QuantizationAnnotation, Quantizer
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    config = get_default_x86_inductor_quantization_config(is_qat=is_qat)
    skips = [get_module_name_filter(name) for name in float_modules]

    class ConvQDQQuantizer(Quantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            feeds_conv = _nodes_feeding_a_conv(model.graph)
            for node in model.graph.nodes:
                if not _is_conv(node) or any(skip(node) for skip in skips):
                    continue
                x, w = node.args[0], node.args[1]
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={x: config.input_activation, w: config.weight},
                    output_qspec=config.input_activation if node in feeds_conv else None, _annotated=True)
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            return None

    return ConvQDQQuantizer()


QUANTIZER_STYLES = ("conv_qdq", "x86_inductor")


def build_quantizer(float_modules: Sequence[str], *, is_qat: bool, style: str = "conv_qdq"):
    """The PT2E quantizer: ``conv_qdq`` (:func:`conv_qdq_quantizer`, the default: fast QDQ graphs for
    ONNX Runtime / TensorRT) or ``x86_inductor`` (torchao's ``X86InductorQuantizer``, whose patterns
    suit ``torch.compile`` on x86 better than ONNX Runtime). ``float_modules`` stay unquantized."""
    if style == "conv_qdq":
        return conv_qdq_quantizer(float_modules, is_qat=is_qat)
    if style != "x86_inductor":
        raise UserInputError(f"quantization: quantizer: expected one of {', '.join(QUANTIZER_STYLES)}, got {style!r}")
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config,
    )

    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config(is_qat=is_qat))
    for name in float_modules:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


def export_program(model: nn.Module, example: Tensor) -> torch.fx.GraphModule:
    """``torch.export`` of ``model`` (its raw forward) with a dynamic batch axis, as a GraphModule."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
    return program.module()


def _loader_batches(split: Any, source: ModelSource, image_size: int, batch_size: int,
                    shuffle: bool) -> Iterable[Batch]:
    from ..data import CocoDataset, build_basic_train_transforms, build_dataloader, build_val_transforms

    build = build_basic_train_transforms if shuffle else build_val_transforms  # letterbox (+ flip for QAT)
    dataset = CocoDataset(split.annotations, split.images, transforms=build(image_size, source.model.input_spec),
                          filter_empty=shuffle)
    drop_last = shuffle and len(dataset) > batch_size
    return build_dataloader(dataset, batch_size, shuffle=shuffle, num_workers=0, drop_last=drop_last)


def iter_batches(data: Any, source: ModelSource, image_size: int, *, batch_size: int, shuffle: bool) -> Iterable[Batch]:
    """Batches ``(images, targets, metas)`` from ``data``:

    * ``None`` — the checkpoint's training split (``config.data.train``): letterbox (+ flip when ``shuffle``);
    * a ``DatasetSplit`` (or a dict / object with ``annotations`` and ``images``) — that split;
    * an iterable of batches (tensors, or ``(images, targets[, metas])`` tuples) — used as is.
    """
    if data is None:
        if source.config is None:
            raise UserInputError("quantization: data is required when the model is not a checkpoint directory")
        data = source.config.data.train
    if isinstance(data, dict) and {"annotations", "images"} <= set(data):
        from ..config.train import DatasetSplit

        data = DatasetSplit(annotations=str(data["annotations"]), images=str(data["images"]))
    if hasattr(data, "annotations") and hasattr(data, "images"):
        return _loader_batches(data, source, image_size, batch_size, shuffle)
    if isinstance(data, (str, Path)):
        raise UserInputError(f"quantization: data: expected a DatasetSplit (annotations, images), got path {data!r}")
    return list(_normalise_batches(data))


def _normalise_batches(batches: Iterable[Any]) -> Iterator[Batch]:
    for item in batches:
        if isinstance(item, Tensor):
            yield item, [], []
        else:
            images, targets, *rest = item
            yield images, list(targets), list(rest[0]) if rest else []


def take(batches: Iterable[Batch], n: int | None) -> list[Batch]:
    return list(itertools.islice(batches, n)) if n is not None else list(batches)


class QuantDeployModule(nn.Module):
    """Converted (int8) raw forward followed by the float ``deploy_decode`` of the original detector
    (``boxes, scores`` — plus ``mask_kernels, mask_feat`` for instance models, as :class:`DeployModule`).
    Neck features a QAT graph returns for distillation (:data:`FEATURES_KEY`) are dropped here."""

    def __init__(self, quantized: nn.Module, detector: nn.Module):
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        super().__init__()
        self.quantized = allow_exported_model_train_eval(quantized)
        self.detector = detector

    @property
    def output_names(self) -> tuple[str, ...]:
        return output_names_of(self.detector)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return self.detector.deploy_decode(split_features(self.quantized(images))[0])


def count_qdq(onnx_path: str | Path) -> dict[str, int]:
    """Counts of QuantizeLinear / DequantizeLinear / QLinear* / Conv nodes in a graph."""
    import onnx

    ops = Counter(n.op_type for n in onnx.load(str(onnx_path)).graph.node)
    keep = ("Conv", "ConvInteger")
    return {k: int(v) for k, v in ops.items() if "quant" in k.lower() or k.startswith("QLinear") or k in keep}


def export_int8(module: nn.Module, example: Tensor, out_dir: Path, source: ModelSource,
                extra: dict[str, Any]) -> dict[str, Any]:
    """Export ``module`` (images → boxes, scores[, mask outputs]) as the int8 QDQ ONNX; check it runs in ORT.

    Returns metrics: exporter, ``ort_vs_torch_max_abs_diff`` (int8 graph in ORT vs the converted
    torch module; rounding can differ by one quantisation step) and the QDQ node counts.
    """
    path = out_dir / INT8_ONNX
    exporter = export_graph(module, example, path, dynamic_batch=True)
    counts = count_qdq(path)
    if not counts.get("QuantizeLinear") or not counts.get("DequantizeLinear"):
        raise RuntimeFailure(f"{path}: the exported graph has no QuantizeLinear/DequantizeLinear nodes ({counts})")
    diff = compare_onnx_to_torch(module, path, [example[:2]])
    size = tuple(example.shape[-2:])
    outputs = graph_outputs_info(getattr(module, "detector", source.model))
    write_sidecar(path, deploy_info(source, size, precision="int8", exporter=exporter, dynamic_batch=True,
                                    with_nms=False, **outputs, **extra))
    return {"exporter": exporter, "ort_vs_torch_max_abs_diff": diff, "qdq_nodes": counts}


def _digest_path(program: Path) -> Path:
    return program.with_name(program.name + PT2_DIGEST_SUFFIX)


def save_torch_program(module: nn.Module, example: Tensor, out_dir: Path) -> str | None:
    """Save the int8 deploy module as a ``torch.export`` program (``model.int8.pt2``) and its SHA-256
    beside it (``model.int8.pt2.sha256``); None if it fails."""
    path = out_dir / INT8_PT2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=False)
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
        data = buffer.getvalue()
        atomic_write(path, data)
        atomic_write(_digest_path(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
        return str(path)
    except Exception as exc:  # the ONNX graph is the main artefact; the torch program is a bonus
        log.warning("could not save the int8 torch program: %s: %s", type(exc).__name__, exc)
        for stale in (path, _digest_path(path)):
            stale.unlink(missing_ok=True)
        return None


def load_torch_program(path: str | Path) -> "torch.export.ExportedProgram":
    """Load an int8 ``.pt2`` program that detflow saved, and nothing else.

    ``torch.export.load`` may retry a failed safe load with ``weights_only=False`` (which runs
    pickled code), so the file is read once, its SHA-256 checked against the digest detflow wrote
    beside it (``<name>.sha256``), and only those verified bytes are deserialised.

    Raises:
        UserInputError: no digest file, or the program does not match it (one line, naming the file).
    """
    path = Path(path)
    digest_file = _digest_path(path)
    rebuild = "re-run the quantisation (detflow quant / a qat or ptq step) to rebuild it"
    try:
        recorded = digest_file.read_text(errors="replace").split()[:1]
    except FileNotFoundError:
        raise UserInputError(f"{path}: refusing to load an int8 torch program without the digest detflow "
                             f"records when it saves one ({digest_file.name} is missing); {rebuild}") from None
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read its digest file {digest_file.name} ({exc.strerror}); "
                             f"{rebuild}") from None
    expected = recorded[0].lower() if recorded else ""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read the int8 torch program ({exc.strerror})") from None
    if len(expected) != 64 or not hmac.compare_digest(hashlib.sha256(data).hexdigest(), expected):
        raise UserInputError(f"{path}: refusing to load an int8 torch program whose SHA-256 does not match "
                             f"the digest detflow recorded in {digest_file.name}; {rebuild}")
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantized_decomposed ops)

    return torch.export.load(io.BytesIO(data))


@torch.no_grad()
def fp32_reference_diff(fp32: nn.Module, int8_onnx: str | Path, batches: Sequence[Tensor]) -> dict[str, float]:
    """How far the int8 graph (ORT) is from the fp32 deploy outputs: max/mean |Δscore|, mean |Δbox| (px)."""
    sess = ort_session(int8_onnx)
    name = sess.get_inputs()[0].name
    ds, db = [], []
    for x in batches:
        boxes, scores = fp32(x)[:2]
        q_boxes, q_scores = sess.run(None, {name: x.numpy()})[:2]
        ds.append(np.abs(scores.numpy() - q_scores).ravel())
        db.append(np.abs(boxes.numpy() - q_boxes).ravel())
    s, b = np.concatenate(ds), np.concatenate(db)
    return {"fp32_score_max_abs_diff": float(s.max()), "fp32_score_mean_abs_diff": float(s.mean()),
            "fp32_box_mean_abs_diff": float(b.mean())}


def write_quant_dir(out_dir: Path, source: ModelSource, metrics: dict[str, Any]) -> None:
    """meta.json (source meta + quantization metrics) and the source's config.yaml into ``out_dir``."""
    meta = dict(source.meta)
    meta["quantization"] = metrics
    meta["source_checkpoint"] = source.checkpoint
    atomic_write(out_dir / "meta.json", json.dumps(meta, indent=2, default=str))
    if source.checkpoint and (Path(source.checkpoint) / "config.yaml").is_file():
        atomic_write(out_dir / "config.yaml", (Path(source.checkpoint) / "config.yaml").read_bytes())

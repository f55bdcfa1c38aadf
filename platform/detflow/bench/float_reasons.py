"""Why a node of an int8 (QDQ) graph still runs in float in ONNX Runtime.

Two graphs are read: the exported QDQ graph (what detflow's quantizer annotated) and the optimised graph ORT
actually runs (``SessionOptions.optimized_model_filepath``: DQ→Conv→Q fused into ``QLinearConv``, layout
``Transpose``/``Reorder*`` nodes inserted). A conv is traced back to its module through its bias/weight
initializer name (``detector.<module>.bias``), which both graphs keep.

Reasons, in order of precedence (:func:`conv_reasons` for the exported convs, :func:`node_reason` for any
optimised node):

* ``keep_float``: partial PTQ kept the conv float (``sensitivity.json`` next to the artifact: rank, SQNR).
* ``skip_layers``: in the sidecar's ``float_modules`` (``--skip-layers``, the model's ``quant_float_modules``,
  DFL projections) but not chosen by the sensitivity ranking.
* ``float output``: weight and input quantised but no ``QuantizeLinear`` after it: the prediction convs keep a
  float output by design (:func:`detflow.quant.common.conv_qdq_quantizer`), and ORT's QDQ fusion needs DQ→Conv→Q,
  so it runs as a float conv on dequantised tensors.
* ``not annotated``: the conv-only quantizer leaves activations (SiLU = Sigmoid·Mul, ReLU), Concat, Resize,
  MaxPool, ConvTranspose … unquantised: they run in float between a DQ and the next Q.
* ``head decode``: nothing quantised downstream: the decode of the predictions into boxes/scores.
* ``layout``: Transpose / ReorderInput / ReorderOutput that ORT inserts (NHWC for QLinearConv, NCHWc for
  float Conv).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from collections.abc import Iterator
from typing import Any

__all__ = ["INT8_OPS", "QDQ_OPS", "LAYOUT_OPS", "module_of", "conv_modules", "conv_reasons", "conv_aliases",
           "node_reason", "quantised_downstream", "read_float_modules"]

INT8_OPS = frozenset({
    "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul",
    "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool",
    "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QLinearConvTranspose", "QAttention",
    "DynamicQuantizeMatMul",
})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
LAYOUT_OPS = frozenset({"Transpose", "ReorderInput", "ReorderOutput"})
_PARAM = re.compile(r"^(?:detector|model)\.(?P<module>.+)\.(?:weight|bias)$")


def module_of(node: Any) -> str | None:
    """The detector module a conv comes from, from its ``detector.<module>.bias`` / ``.weight`` input name."""
    for name in reversed(list(node.input)):
        match = _PARAM.match(name)
        if match:
            return match.group("module")
    return None


def conv_modules(graph: Any) -> dict[str, str]:
    """``{node name: module}`` for each Conv of ``graph``; convs sharing one parameter name (or without one)
    get ``module (node name)`` so that no two convs share a key."""
    keys: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "Conv":
            module = module_of(node)
            keys[node.name] = module if module and module not in keys.values() else f"{module or '?'} ({node.name})"
    return keys


def _convs(graph: Any) -> Iterator[tuple[Any, str]]:
    """``(node, module key of conv_modules)`` for each Conv of ``graph``, in graph order."""
    keys = conv_modules(graph)
    return ((node, keys[node.name]) for node in graph.node if node.op_type == "Conv")


def read_float_modules(artifact_dir: Path) -> tuple[list[str], dict[str, dict]]:
    """(sidecar ``float_modules``, ``{module: {rank, sqnr_db}}`` of the convs partial PTQ kept float)."""
    floats: list[str] = []
    for sidecar in sorted(artifact_dir.glob("*.json")):
        try:
            data = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("float_modules"), list):
            floats = [str(m) for m in data["float_modules"]]
            break
    kept: dict[str, dict] = {}
    report = artifact_dir / "sensitivity.json"
    if report.is_file():
        data = json.loads(report.read_text())
        ranks = {layer["name"]: layer for layer in data.get("layers", [])}
        for name in data.get("kept_float", []):
            layer = ranks.get(name, {})
            kept[name] = {"rank": layer.get("rank"), "sqnr_db": layer.get("sqnr_db")}
    return floats, kept


def _under(module: str, prefixes: list[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _consumers(graph: Any) -> dict[str, list[Any]]:
    """``{tensor name: nodes that read it}`` of an onnx GraphProto."""
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    return consumers


def conv_reasons(graph: Any, float_modules: list[str], kept: dict[str, dict]) -> dict[str, str]:
    """``{module: reason}`` for each exported Conv of a QDQ ``graph`` (onnx GraphProto) that ORT will not
    turn into QLinearConv."""
    producer = {out: n for n in graph.node for out in n.output}
    consumers = _consumers(graph)
    reasons: dict[str, str] = {}
    for node, module in _convs(graph):
        from_dq = [getattr(producer.get(i), "op_type", None) == "DequantizeLinear" for i in node.input[:2]]
        to_q = any(c.op_type == "QuantizeLinear" for c in consumers.get(node.output[0], []))
        if module in kept or module_of(node) in kept:
            info = kept.get(module) or kept[module_of(node)]
            reasons[module] = (f"keep_float: partial PTQ kept it float (sensitivity rank {info['rank']}, "
                               f"SQNR {info['sqnr_db']} dB)")
        elif _under(module_of(node) or "", float_modules):
            reasons[module] = "skip_layers: listed in the artifact's float_modules"
        elif all(from_dq) and not to_q:
            reasons[module] = ("float output: a prediction conv keeps a float output by design, and ORT fuses "
                               "only DQ→Conv→Q into QLinearConv")
        elif not all(from_dq):
            reasons[module] = "not annotated: input or weight not quantised in the exported graph"
    return reasons


def conv_aliases(graph: Any) -> dict[str, str]:
    """``{tensor: module}`` for each Conv output of the exported ``graph`` and the output of an activation it
    alone feeds: ORT names a float NCHWc conv ``<that tensor>_nchwc`` and drops the bias name when it folds BN."""
    consumers = _consumers(graph)
    aliases: dict[str, str] = {}
    for node, module in _convs(graph):
        aliases[node.output[0]] = module
        users = consumers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type in ("Relu", "Sigmoid", "Clip", "LeakyRelu", "HardSigmoid"):
            aliases[users[0].output[0]] = module
    return aliases


def quantised_downstream(graph: Any) -> set[str]:
    """Names of the nodes of ``graph`` (the optimised one) from which some int8 op or QuantizeLinear is
    reachable."""
    consumers = _consumers(graph)
    reach: set[str] = set()
    for node in reversed(list(graph.node)):  # ORT saves the optimised graph in topological order
        users = [u for out in node.output for u in consumers.get(out, [])]
        if any(u.op_type in INT8_OPS or u.op_type == "QuantizeLinear" or u.name in reach for u in users):
            reach.add(node.name)
    return reach


def node_reason(node: Any, dtype: str, convs: dict[str, str], feeds_int8: set[str],
                aliases: dict[str, str] | None = None) -> str:
    """Why optimised-graph ``node`` (first input of type ``dtype``) is not an int8 kernel ('' if it is)."""
    op = node.op_type
    if op in INT8_OPS or (dtype in ("uint8", "int8") and op not in QDQ_OPS):
        return ""
    if op in QDQ_OPS:
        return "q/dq: (de)quantisation at a float ↔ int8 boundary"
    if op in LAYOUT_OPS and ("token" in node.name or op.startswith("Reorder")):
        return "layout: inserted by ORT (NCHWc blocks for a float Conv)"
    if op == "Conv":
        names = [node.name.removesuffix("_nchwc"), *node.output]
        module = next((aliases[n] for n in names if aliases and n in aliases), None) or module_of(node) or ""
        if module in convs:
            return f"{module}: {convs[module]}"
    if node.name not in feeds_int8:
        return "head decode: nothing quantised downstream (boxes/scores from the predictions)"
    return (f"not annotated: the conv-only quantizer leaves {op} unquantised; it runs in float between a DQ "
            "and the next Q")

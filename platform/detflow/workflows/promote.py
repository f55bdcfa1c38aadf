"""The benchmark step's promote rule: a tiny, safe condition language over a benchmark row.

``when`` is parsed with :mod:`ast` and only these nodes are accepted: column names (the numeric
columns of a benchmark row, :data:`COLUMNS`), numbers, comparisons (``< <= > >= == !=``, chained
too), ``and`` / ``or`` / ``not`` and parentheses. Nothing is ever ``eval``-ed: :func:`evaluate`
walks the tree. A column that is missing or not a number in the row (a failed or skipped cell)
makes the rule not hold.

Example::

    rule = parse_condition("mAP50 >= 0.70 and p50_ms <= 30")
    evaluate(rule, {"mAP50": 0.72, "p50_ms": 12.0})   # True
"""
from __future__ import annotations

import ast
import operator
from typing import Any, Mapping

__all__ = ["COLUMNS", "parse_condition", "evaluate", "condition_names", "select_row"]

# the numeric columns of detflow.bench.matrix.BenchRow (+ the workflow's latency_p50_ms alias)
COLUMNS = ("batch_size", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "mAP", "mAP50", "latency_p50_ms")

_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}


def _check(node: ast.AST, text: str) -> None:
    if isinstance(node, ast.BoolOp) and isinstance(node.op, (ast.And, ast.Or)):
        for value in node.values:
            _check(value, text)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check(node.operand, text)
    elif isinstance(node, ast.Compare):
        if not all(type(op) in _COMPARE for op in node.ops):
            raise ValueError(f"{text!r}: only < <= > >= == != compare (not 'in' / 'is')")
        for value in [node.left, *node.comparators]:
            _check_operand(value, text)
    else:
        raise ValueError(f"{text!r}: expected comparisons joined by and / or / not, e.g. 'mAP50 >= 0.7 and p50_ms <= 30'")


def _check_operand(node: ast.AST, text: str) -> None:
    if isinstance(node, ast.Name):
        if node.id not in COLUMNS:
            raise ValueError(f"{text!r}: unknown column {node.id!r}; expected one of {', '.join(COLUMNS)}")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        _check_operand(node.operand, text)
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        pass
    else:
        raise ValueError(f"{text!r}: a comparison takes column names and numbers only "
                         f"(not {ast.unparse(node)!r})")


def parse_condition(text: str) -> ast.expr:
    """The checked expression tree of ``text``; ValueError (one line, naming ``text``) otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{text!r}: expected a condition such as 'mAP50 >= 0.7 and p50_ms <= 30'")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"{text!r}: not a valid condition ({exc.msg})") from None
    _check(tree.body, text)
    return tree.body


def condition_names(node: ast.AST) -> list[str]:
    """The column names a parsed condition reads, in order of first use."""
    return list(dict.fromkeys(n.id for n in ast.walk(node) if isinstance(n, ast.Name)))


class _Missing(Exception):
    pass


def _value(node: ast.AST, row: Mapping[str, Any]) -> float:
    if isinstance(node, ast.Name):
        value = row.get(node.id)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise _Missing(node.id)
        return float(value)
    if isinstance(node, ast.UnaryOp):
        return -_value(node.operand, row)
    return float(node.value)  # a checked number constant


def _eval(node: ast.AST, row: Mapping[str, Any]) -> bool:
    if isinstance(node, ast.BoolOp):
        values = (_eval(v, row) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        return not _eval(node.operand, row)
    left = _value(node.left, row)
    for op, right_node in zip(node.ops, node.comparators):
        right = _value(right_node, row)
        if not _COMPARE[type(op)](left, right):
            return False
        left = right
    return True


def evaluate(condition: str | ast.AST, row: Mapping[str, Any]) -> bool:
    """Whether ``condition`` holds on ``row``; False when a column it reads is missing or not a number."""
    node = parse_condition(condition) if isinstance(condition, str) else condition
    try:
        return _eval(node, row)
    except _Missing:
        return False


def select_row(rows: list[Mapping[str, Any]], artifact: str, backend: str, batch_size: int | None = None,
               precision: str | None = None) -> Mapping[str, Any] | None:
    """The row of ``artifact`` on ``backend`` the rule reads: the given ``batch_size`` (else the
    smallest) and ``precision`` (else any), ``ok`` rows first; None when there is none."""
    found = [r for r in rows if r.get("artifact") == artifact and r.get("backend") == backend
             and (batch_size is None or int(r.get("batch_size") or 0) == batch_size)
             and (precision is None or r.get("precision") == precision)]
    if not found:
        return None
    return sorted(found, key=lambda r: (r.get("status") != "ok", int(r.get("batch_size") or 0)))[0]

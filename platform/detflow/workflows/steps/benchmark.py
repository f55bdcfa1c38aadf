"""``benchmark``: the artifact × backend × batch-size matrix of upstream steps (``detflow.bench.run_benchmark``).

Each referenced step contributes one artifact named after the step: its checkpoint (a quantisation
step's output directory carries its int8 ONNX) or, for an ``export`` step, its ONNX file.

With ``promote: {alias: champion, when: "mAP50 >= 0.70 and p50_ms <= 30", artifact: qat, backend:
onnxruntime}`` the step checks the rule on that artifact's row (:mod:`detflow.workflows.promote`),
prints which rule held and returns it as ``outputs["promote"]`` (``held``, the row's values read);
the workflow's lineage then points the alias at the artifact step's registered version, only when
it held.
"""
from __future__ import annotations

from ..context import StepContext
from ..promote import condition_names, evaluate, parse_condition, select_row
from ..schema import BenchmarkParams, PromoteRule
from . import split_of

__all__ = ["run"]


def run(params: BenchmarkParams, ctx: StepContext) -> dict:
    from ...bench import BenchArtifact, run_benchmark

    artifacts = [BenchArtifact(step_id, str(ctx.local(step_id, "checkpoint", "onnx"))) for step_id in params.artifacts]
    table = run_benchmark(artifacts, backends=params.backends, batch_sizes=params.batch_sizes,
                          input_size=params.input_size, val=split_of(ctx, params.data, "val"), warmup=params.warmup,
                          iters=params.iters, missing_backend=params.missing_backend, threads=params.threads,
                          precisions=params.precisions, max_eval_images=params.max_eval_images,
                          work_dir=ctx.path / "exports")
    files = table.save(ctx.path)
    rows = [{**r, "latency_p50_ms": r.get("p50_ms")} for r in table.to_records()]
    print(table.to_markdown())
    out = {"table_csv": files["csv"], "table_md": files["md"], "table_json": files["json"], "rows": rows,
           "protocol": table.protocol, "metrics": table.metrics()}
    if params.promote is not None:
        out["promote"] = check_promote(params.promote, rows)
        print(out["promote"]["message"])
    return out


def check_promote(rule: PromoteRule, rows: list[dict]) -> dict:
    """Whether ``rule`` holds on its row of ``rows``: ``{alias, when, artifact, backend, held, values, message}``."""
    node = parse_condition(rule.when)
    row = select_row(rows, rule.artifact, rule.backend, rule.batch_size, rule.precision)
    values = {k: (row or {}).get(k) for k in condition_names(node)}
    held = row is not None and evaluate(node, row)
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    where = f"{rule.artifact}/{rule.backend}" + (f" batch {row.get('batch_size')}" if row else " (no such row)")
    message = (f"promote: rule {rule.when!r} {'held' if held else 'did not hold'} on {where} ({shown}) → "
               + (f"alias {rule.alias!r}" if held else f"alias {rule.alias!r} not set"))
    return {"alias": rule.alias, "when": rule.when, "artifact": rule.artifact, "backend": rule.backend,
            "batch_size": row.get("batch_size") if row else None, "held": held, "values": values, "message": message}

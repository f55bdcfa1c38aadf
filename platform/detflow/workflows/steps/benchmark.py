"""``benchmark``: the artifact × backend × batch-size matrix of upstream steps (``detflow.bench.run_benchmark``).

Each referenced step contributes one artifact named after the step: its checkpoint (a quantisation
step's output directory carries its int8 ONNX) or, for an ``export`` step, its ONNX file.
"""
from __future__ import annotations

from ..context import StepContext
from ..schema import BenchmarkParams
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
    return {"table_csv": files["csv"], "table_md": files["md"], "table_json": files["json"], "rows": rows,
            "protocol": table.protocol, "metrics": table.metrics()}

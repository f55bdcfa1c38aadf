"""`detflow models zoo` (issue 21, point 4): the table covers the registry, its measured columns equal
what `detflow models list` measures, it prints without importing torch, and its published numbers."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

SMALL = ["rtmdet_tiny", "rtmdet_ins_tiny", "yolov6_n", "spinenet_49s"]


def _cli(*args: str, env: dict, importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, "-m", "detflow", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_table_covers_every_registered_variant_once():
    import detmodels
    from detflow.zoo import ZOO, SOURCES, zoo_entries

    names = [e.name for e in ZOO]
    assert len(names) == len(set(names))
    assert [e.name for e in zoo_entries()] == detmodels.list_models()
    for e in ZOO:
        entry = detmodels.get_model_entry(e.name)
        assert (e.family, e.task, e.input_size) == (entry.family, entry.task, entry.input_size), e.name
        assert e.source in SOURCES
        assert (e.mask_ap is not None) == (e.task == "segm" and e.box_ap is not None), e.name
    assert [e.name for e in zoo_entries("yolov3_asff")] == detmodels.list_models("yolov3_asff")


def test_published_numbers_and_their_sources():
    from detflow.zoo import get_entry

    tiny, n, ins, s49, asff = (get_entry(k) for k in ("rtmdet_tiny", "yolov6_n", "rtmdet_ins_s", "spinenet_49",
                                                      "yolov3_asff_rfb"))
    assert (tiny.box_ap, tiny.t4_trt_ms, tiny.coco_split, tiny.paper_params_m) == (41.1, 2.34, "val2017", 4.8)
    assert (n.box_ap, n.t4_trt_ms, n.paper_params_m, n.paper_gflops) == (37.5, round(1000 / 779, 2), 4.7, 11.4)
    assert (ins.box_ap, ins.mask_ap, ins.t4_trt_ms) == (44.0, 38.7, None)  # RTMDet-Ins: 3090 latency only
    assert (s49.box_ap, s49.t4_trt_ms, s49.source) == (44.3, None, "spinenet")
    assert (asff.box_ap, asff.coco_split, asff.paper_params_m) == (42.4, "test-dev", None)
    with pytest.raises(KeyError, match="not in the zoo"):
        get_entry("rtmdet_huge")


@pytest.mark.parametrize("name", SMALL)
def test_params_and_gflops_equal_what_models_list_measures(name):
    import detmodels
    from detflow.cli.models import model_rows
    from detflow.zoo import get_entry

    (row,) = model_rows([name], with_flops=True, progress=False)  # what `detflow models list NAME` prints
    entry = get_entry(name)
    assert abs(entry.params_m - row["params_m"]) <= 0.01
    assert abs(entry.gflops - row["gflops"]) <= 0.01 * row["gflops"] + 0.01
    if entry.deploy_params_m is not None:  # YOLOv6: the authors count the re-parameterised model
        deployed = detmodels.reparameterize_model(detmodels.create_model(name, num_classes=80).eval())
        assert abs(entry.deploy_params_m - detmodels.count_params(deployed) / 1e6) <= 0.01


@pytest.mark.slow
def test_params_of_every_variant_equal_the_built_models():
    import detmodels
    from detflow.zoo import zoo_entries

    wrong = []
    for e in zoo_entries():
        measured = detmodels.count_params(detmodels.create_model(e.name, num_classes=80)) / 1e6
        if abs(measured - e.params_m) > 0.01:
            wrong.append(f"{e.name}: table {e.params_m}, built {measured:.3f}")
    assert not wrong, wrong


def test_zoo_json_does_not_import_torch(cli_env):
    proc = _cli("models", "zoo", "--json", env=cli_env, importtime=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "detflow.zoo" in imported and "detflow.weights.catalog" in imported  # the check sees real imports
    assert "torch" not in imported and "detmodels" not in imported
    rows = json.loads(proc.stdout)
    from detflow.weights.catalog import has_official_weights
    from detflow.zoo import ZOO

    assert len(rows) == len(ZOO)
    by_name = {r["name"]: r for r in rows}
    assert all(r["official_weights"] is has_official_weights(r["name"]) for r in rows)
    assert by_name["rtmdet_tiny"]["official_weights"] is True and by_name["spinenet_49"]["official_weights"] is False
    assert "mmdetection" in by_name["rtmdet_tiny"]["source_text"]


def test_zoo_table_with_family_filter_and_caption(cli_env):
    proc = _cli("models", "zoo", "--family", "yolov6", env={**cli_env, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "yolov6_n " in out and "yolov6_l6" in out and "rtmdet_tiny" not in out
    assert "37.5" in out and "1.28" in out  # the paper's own params/FLOPs (4.7/11.4) are in --json only
    assert "meituan/YOLOv6 README" in out and "T4 TensorRT 7.2" in out  # the caption names the source


def test_zoo_table_fits_an_80_column_terminal(cli_env):
    out = _cli("models", "zoo", env={**cli_env, "COLUMNS": "80"}).stdout
    rows = [line for line in out.splitlines() if line.split()[:1] and line.split()[0].startswith(("rtmdet", "yolo", "spinenet"))]
    assert len(rows) >= 20 and not any("…" in line for line in rows), rows
    assert "rtmdet_ins_tiny " in out and "51.2/43.7" in out  # full names, box/mask AP unclipped


def test_zoo_unknown_family_is_one_line_exit_2(cli_env):
    proc = _cli("models", "zoo", "--family", "yolov9", env=cli_env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --family: unknown family 'yolov9'; known: rtmdet, spinenet, yolov3_asff, yolov6"]

"""Durable writes (issue 19 item 3): ``detflow.atomic``, corrupt-state errors, ``best/`` swapped in only
after its epoch was reported, checkpoint pruning of temporaries, unique run directories."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from detflow import atomic
from detflow.atomic import CorruptStateError, atomic_path, atomic_write, read_json_state
from detflow.engine import checkpoint as ck

PLATFORM = Path(atomic.__file__).resolve().parents[1]

# The writer loads detflow.atomic without running detflow/__init__ (a fast interpreter start), then
# rewrites the state file forever with generations 1, 2, 3 … each ~1 MB, all-or-nothing to a reader.
WRITER = f"""
import json, sys, types
pkg = types.ModuleType("detflow"); pkg.__path__ = [{str(PLATFORM / "detflow")!r}]
sys.modules["detflow"] = pkg
from detflow.atomic import atomic_write
path, gen = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
while True:
    gen += 1
    atomic_write(path, json.dumps({{"gen": gen, "pad": str(gen % 10) * 1_000_000}}))
"""


def _check_state(path: Path) -> int:
    """The generation stored in ``path``, asserting the file is one complete version."""
    state = read_json_state(path, "test state", "n/a")
    assert state["pad"] == str(state["gen"] % 10) * 1_000_000
    return state["gen"]


def test_sigkilled_writer_never_leaves_a_partial_file(tmp_path):
    path = tmp_path / "state.json"
    atomic_write(path, json.dumps({"gen": 0, "pad": "0" * 1_000_000}))
    rng = random.Random(19)
    gen, advanced = 0, 0
    for _ in range(50):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(gen)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + rng.uniform(0.0, 0.06)
        while time.monotonic() < deadline:  # a reader running beside the writer
            _check_state(path)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        new = _check_state(path)  # old or new content, never a mix
        assert new >= gen
        advanced += new > gen
        gen = new
    assert advanced >= 10  # the writer did rewrite the file between kills
    names = [p.name for p in tmp_path.iterdir()]
    assert all(n == "state.json" or atomic.is_temp(n) for n in names)  # killed writes leave only temporaries
    assert all(not n.endswith(".json.tmp") for n in names)


def test_clean_writes_leave_no_temporaries_and_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "sub" / "meta.json"
    for i in range(3):
        atomic_write(path, json.dumps({"i": i}))
    assert json.loads(path.read_text()) == {"i": 2}
    assert [p.name for p in path.parent.iterdir()] == ["meta.json"]
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"i": ')  # a writer that fails halfway
        raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"i": 2}
    assert [p.name for p in path.parent.iterdir()] == ["meta.json"]
    with pytest.raises(FileNotFoundError), atomic_path(path):
        pass  # the writer produced nothing: the old file stays
    assert json.loads(path.read_text()) == {"i": 2}


@pytest.mark.parametrize("content, why", [("", "empty file"), ('{"run_id": "ab', "invalid JSON"), ("[1, 2]", "expected a JSON dict")])
def test_read_json_state_names_file_and_recovery(tmp_path, content, why):
    path = tmp_path / "detflow_run.json"
    path.write_text(content)
    with pytest.raises(CorruptStateError) as err:
        read_json_state(path, "run marker", "delete it to start afresh")
    message = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in message
    assert message.startswith(f"{path}: corrupt run marker (") and why in message
    assert message.endswith("; delete it to start afresh")


def _save(path: Path, epoch: int) -> Path:
    model = torch.nn.Linear(2, 1)
    torch.nn.init.constant_(model.weight, float(epoch))
    return ck.save_checkpoint(path, state={"model": model.state_dict(), "epoch": epoch}, config={"e": epoch},
                              meta={"epoch": epoch})


def test_best_is_published_only_after_the_report(tmp_path):
    best = tmp_path / "best"
    ck.publish_checkpoint(_save(tmp_path / "epoch_0000", 0), best)
    unreported = _save(tmp_path / "epoch_0001", 1)

    def killed_during_report():
        raise KeyboardInterrupt  # the worker dies between checkpoint save and report

    with pytest.raises(KeyboardInterrupt):
        ck.report_then_publish(killed_during_report, unreported, best, better=True)
    assert ck.read_meta(best) == {"epoch": 0}  # never weights of an epoch that was not reported
    reported = []
    ck.report_then_publish(lambda: reported.append(1), unreported, best, better=True)
    assert reported == [1] and ck.read_meta(best) == {"epoch": 1}
    assert ck.load_checkpoint_state(best)["model"]["weight"].eq(1.0).all()
    ck.report_then_publish(lambda: None, _save(tmp_path / "epoch_0002", 2), best, better=False)
    assert ck.read_meta(best) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "epoch_0000", "epoch_0001", "epoch_0002"]


def test_best_swap_never_leaves_a_reader_without_a_checkpoint(tmp_path):
    epochs = [_save(tmp_path / f"epoch_{e:04d}", e) for e in range(2)]
    best = ck.publish_checkpoint(epochs[0], tmp_path / "best")
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            assert ck.is_checkpoint(best)
            seen.add(json.loads((best / ck.META_FILE).read_text())["epoch"])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(20):
            ck.publish_checkpoint(epochs[i % 2], best)
    finally:
        stop.set()
        thread.join()
    assert seen <= {0, 1} and ck.is_checkpoint(best)
    assert not [p for p in tmp_path.iterdir() if atomic.is_temp(p.name)]


def test_pruning_removes_temporary_directories(tmp_path):
    paths = [_save(tmp_path / f"epoch_{e:04d}", e) for e in range(3)]
    stale = [tmp_path / ".tmp-1a2b3c4d-epoch_0003", tmp_path / ".old-best-5e6f7a8b"]
    for d in stale:
        d.mkdir()
        (d / "model.pt").write_bytes(b"partial")
    (tmp_path / ".tmp-9c0d1e2f-best").write_bytes(b"x")  # a stray temporary file too
    deleted = ck.prune_checkpoints(tmp_path, keep_last=2)
    assert paths[0] in deleted and all(d in deleted for d in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0001", "epoch_0002"]
    fresh = tmp_path / ".tmp-00000000-epoch_0004"
    fresh.mkdir()  # a write in progress is left alone when a minimum age is asked for
    assert ck.prune_checkpoints(tmp_path, keep_last=2, stale_temp_s=3600) == []
    assert fresh.is_dir()


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    from detflow.train import runner

    monkeypatch.setattr(runner.time, "strftime", lambda fmt, *a: "20261206-120000")
    names: list[str] = []
    threads = [threading.Thread(target=lambda: names.append(runner._new_run_name(str(tmp_path), "exp")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 8 and all((tmp_path / n).is_dir() for n in names)
    assert all(runner._run_name_re("exp").match(n) for n in names)
    # the newest of one second is the marker written last
    for i, name in enumerate(names):
        runner._write_marker(str(tmp_path), name, {"run_id": f"r{i}", "name": name, "created": 1000.0 + i})
    assert runner._latest_run(str(tmp_path), "exp") == (names[-1], {"run_id": "r7", "name": names[-1], "created": 1007.0})
    assert not [p for n in names for p in (tmp_path / n).iterdir() if atomic.is_temp(p.name)]


def test_corrupt_run_marker_is_exit_2_naming_the_file(tmp_path):
    from detflow.train import runner

    run = tmp_path / "exp-20261206-120000-abc123"
    run.mkdir()
    (run / runner.RUN_MARKER).write_text('{"run_id": "12')  # truncated by a crash before atomic writes
    with pytest.raises(CorruptStateError) as err:
        runner._latest_run(str(tmp_path), "exp")
    assert err.value.exit_code == 2
    assert str(err.value).startswith(f"{run / runner.RUN_MARKER}: corrupt run marker")
    assert f"delete the run directory {run}" in str(err.value)


def test_corrupt_sweep_and_nas_state_are_exit_2_naming_the_file(tmp_path, monkeypatch):
    from detflow.archsearch.runner import find_nas
    from detflow.tune.runner import find_sweep

    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path))
    sweep = tmp_path / "sweeps" / "s1" / "sweep.json"
    sweep.parent.mkdir(parents=True)
    sweep.write_text('{"config": {"name": "s1"')
    with pytest.raises(CorruptStateError, match=rf"^{sweep}: corrupt sweep state \(invalid JSON") as err:
        find_sweep("s1")
    assert err.value.exit_code == 2 and "start the sweep again" in str(err.value)
    sweep.write_text('{"config": 3}')
    with pytest.raises(CorruptStateError, match=r"no config / config_dir"):
        find_sweep("s1")
    nas = tmp_path / "nas" / "n1" / "detflow_nas.json"
    nas.parent.mkdir(parents=True)
    nas.write_bytes(b"")
    with pytest.raises(CorruptStateError, match=rf"^{nas}: corrupt NAS state \(empty file"):
        find_nas("n1")


def test_artifact_store_write_text_is_atomic_for_local_paths(tmp_path, monkeypatch):
    from detflow import artifact_store

    target = tmp_path / "a" / "b.txt"
    artifact_store.write_text(str(target), "one")
    calls = []
    real = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (calls.append((Path(a).name, Path(b).name)), real(a, b)))
    artifact_store.write_text(str(target), "two")
    assert target.read_text() == "two" and len(calls) == 1
    assert atomic.is_temp(calls[0][0]) and calls[0][1] == "b.txt"
    assert [p.name for p in target.parent.iterdir()] == ["b.txt"]


def test_cli_resume_of_a_corrupt_sweep_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from detflow.cli import main

    monkeypatch.setenv("DETFLOW_HOME", str(tmp_path))
    state = tmp_path / "sweeps" / "s1" / "sweep.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"config": {"name": "s1", "base": "b')  # cut off mid-write
    assert main(["sweep", "--resume", "s1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {state}: corrupt sweep state (invalid JSON") and "\n" not in err
    assert "Traceback" not in err and "JSONDecodeError" not in err


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_swap_dirs_exchanges_contents(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_renameat2", lambda: None)
    a, b = tmp_path / "a", tmp_path / "b"
    for d, text in ((a, "new"), (b, "old")):
        d.mkdir()
        (d / "f").write_text(text)
    atomic.swap_dirs(a, b)
    assert (b / "f").read_text() == "new" and (a / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]

"""Reliability matrix, files row (issue 25, item 6): optimised-schedule cache files that are corrupt,
truncated at any point, foreign, or left by a process killed mid-write give a clear error naming the
file before any model call (or are skipped by 'latest'), and nothing the user saved is overwritten:
writes are atomic. In the real ComfyUI host, on the lab model (which counts its model calls)."""
import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from pathlib import Path
import torch

SMALL = dict(grid=16)


@pytest.fixture()
def env(lab_user, tmp_path):
    e, M = lab_user, lab_user.M
    e.cache = e.pack.bridge.schedule_cache
    e.dir = tmp_path / "fewstep" / "schedules"
    e.calls = lambda: e.model.model.diffusion_model.calls
    e.optimise = lambda: M["FewStepOptimizeSchedule"].execute(e.model, e.cond, e.cond, 1.0, 64, 64, 3, "dpmpp_2m",
                                                                 2, 0, **SMALL).result
    e.load = lambda name: M["FewStepLoadOptimizedSchedule"].execute(e.model, name, 3).result
    e.optimise()
    (e.path,) = list(e.dir.glob("*.json"))
    e.good = e.path.read_bytes()
    return e


def _damage(kind: str, good: bytes):
    text = good.decode()
    if kind.startswith("truncated"):
        return good[: int(len(good) * float(kind.split("_")[1]))]
    return {
        "empty": b"",
        "binary": bytes(range(256)) * 4,
        "json_list": b"[1, 2, 3]",
        "json_null": b"null",
        "foreign_json": json.dumps({"last_node_id": 3, "nodes": []}).encode(),  # a workflow saved under that name
        "nan_sigma": text.replace('"sigmas": [', '"sigmas": [NaN, ', 1).encode(),
        "grid_strings": json.dumps({**json.loads(text), "grid": ["a", "b"]}).encode(),
        "dp_not_dict": json.dumps({**json.loads(text), "dp": {"jump1": 3}}).encode(),
    }[kind]


KINDS = ["empty", "binary", "json_list", "json_null", "foreign_json", "nan_sigma", "grid_strings", "dp_not_dict",
         "truncated_0.01", "truncated_0.3", "truncated_0.5", "truncated_0.9", "truncated_0.999"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_or_foreign_file_is_a_clear_error_naming_it_and_is_never_overwritten(env, kind):
    bad = _damage(kind, env.good)
    env.path.write_bytes(bad)
    calls = env.calls()
    for attempt in (env.optimise, lambda: env.load(env.path.name)):
        with pytest.raises(ValueError) as info:
            attempt()
        assert isinstance(info.value, env.cache.ScheduleCacheError), repr(info.value)
        assert env.path.name in str(info.value) and "Delete it" in str(info.value)
    assert env.calls() == calls  # refused before any model call
    assert env.path.read_bytes() == bad  # the user's file is left as it was
    # 'latest' skips it with a warning instead of failing
    with pytest.raises(ValueError, match="no optimised schedule for this model"):
        env.load("latest for this model")


def test_directory_in_place_of_the_file(env):
    env.path.unlink()
    env.path.mkdir()
    with pytest.raises(env.cache.ScheduleCacheError, match=env.path.name):
        env.optimise()
    assert env.path.is_dir()


_KILLED_WRITER = """
import importlib, json, os, sys, time, types
# the pack as a bare package (its __init__ would load every node), ComfyUI importable for bridge/
sys.path.insert(0, os.environ["COMFYUI_PATH"])
pack = types.ModuleType("fewstep_pack")
pack.__path__ = [sys.argv[1]]
sys.modules["fewstep_pack"] = pack
cache = importlib.import_module("fewstep_pack.bridge.schedule_cache")
record = json.loads(open(sys.argv[2]).read())
record["created"] = "9999"
def half_then_hang(obj, f, **kw):
    text = json.dumps(obj, **kw)
    f.write(text[: len(text) // 2])
    f.flush()
    print("half written", flush=True)
    time.sleep(120)
cache.json.dump = half_then_hang
cache.write(sys.argv[2], record)
"""


def test_writer_killed_mid_write_leaves_the_old_file_intact(env, tmp_path):
    """A real process, SIGKILLed with half the new file written: the old file is byte-for-byte
    intact and still used (no model call), the left-over temporary is never listed or read, and
    the next write succeeds."""
    script = tmp_path / "writer.py"
    script.write_text(_KILLED_WRITER)
    repo = str(Path(env.cache.__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, str(script), repo, str(env.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "half written"
        leftovers = [p for p in env.dir.iterdir() if p.name.endswith(".tmp")]
        assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert env.path.read_bytes() == env.good
    assert env.cache.list_files(str(env.dir.parent.parent)) == [env.path.name]
    calls = env.calls()
    sig, _, report = env.optimise()
    assert env.calls() == calls and "cached" in report
    assert env.load("latest for this model")[0].tolist() == sig.tolist()
    record = json.loads(env.good)
    record["created"] = "later"
    env.cache.write(str(env.path), record)
    assert env.cache.read(str(env.path))["created"] == "later"


def test_failed_write_removes_its_temporary_and_keeps_the_old_file(env, monkeypatch):
    record = json.loads(env.good)

    def broken(obj, f, **kw):
        f.write("{")
        raise OSError("disk full")
    monkeypatch.setattr(env.cache.json, "dump", broken)
    with pytest.raises(OSError, match="disk full"):
        env.cache.write(str(env.path), record)
    monkeypatch.undo()
    assert env.path.read_bytes() == env.good
    assert [p.name for p in env.dir.iterdir()] == [env.path.name]


def test_concurrent_writers_of_one_file(env):
    """Two prompts (server threads) finishing the same schedule at once: no error, a valid file."""
    record = json.loads(env.good)
    errors = []

    def writer(k):
        try:
            for i in range(20):
                env.cache.write(str(env.path), {**record, "created": f"{k}-{i}"})
        except Exception as e:  # collected: the assertion below names it
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert env.cache.read(str(env.path))["created"].endswith("-19")
    assert [p.name for p in env.dir.iterdir()] == [env.path.name]
    assert torch.is_tensor(env.load(env.path.name)[0])

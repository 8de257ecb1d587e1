"""The run's manifest: an append-only JSONL journal in the output folder. Each line is one event of
one job (submitted, done, failed, timeout, requeued) or a run header; the last line of a job says
where it stands, so a re-run skips what is done and never sends it again."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory lock; one runner per folder is then up to the user
    fcntl = None

DONE = "done"
FINAL_STATES = ("done", "failed", "timeout")


def now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def read_records(path) -> tuple[list, int]:
    """(records, number of unreadable lines). A line cut short by a killed runner is skipped."""
    path = Path(path)
    if not path.exists():
        return [], 0
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records, bad


def job_states(records) -> dict:
    """job key -> its last record; a done record is never overridden by a later one."""
    state = {}
    for rec in records:
        key = rec.get("job")
        if not key:
            continue
        if state.get(key, {}).get("status") == DONE:
            continue
        state[key] = rec
    return state


class Manifest:
    """Appends records, one fsync'd line each, under a lock that keeps a second runner out."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "a+", encoding="utf-8")
        if fcntl is not None:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._file.close()
                raise RuntimeError(f"another batch run is writing {self.path}; wait for it or use another "
                                   f"--out folder") from None
        with open(self.path, "rb") as raw:
            raw.seek(0, os.SEEK_END)
            if raw.tell() > 0:
                raw.seek(-1, os.SEEK_END)
                if raw.read(1) != b"\n":
                    self._file.write("\n")  # a line cut short by a killed runner stays on its own
                    self._file.flush()
        self.records, self.unreadable = read_records(self.path)

    def states(self) -> dict:
        return job_states(self.records)

    def write(self, record: dict) -> dict:
        record = {"time": now_iso(), **record}
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            if self._file.closed:  # the run was stopped (Ctrl-C) while a worker still reported
                return record
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self.records.append(record)
        return record

    def close(self):
        with self._lock:
            if not self._file.closed:
                self._file.close()

"""The work queue shared by the per-server workers: a job is either pending, in flight on exactly one
server, or finished; a job whose server dropped goes back to the front of the queue."""
from __future__ import annotations

import collections
import threading


class JobQueue:
    def __init__(self, jobs=()):
        self._cond = threading.Condition()
        self._pending = collections.deque(jobs)
        self._in_flight = {}      # job key -> server url
        self._stopped = False

    def take(self, server: str, poll: float = 0.5):
        """The next job for `server`, waiting while other servers still hold jobs that may come back;
        None once nothing is pending or in flight, or after stop()."""
        with self._cond:
            while True:
                if self._stopped:
                    return None
                for i, job in enumerate(self._pending):
                    # a job adopted from an earlier run waits for the server it already runs on
                    if job.attach is None or job.attach[0] == server:
                        del self._pending[i]
                        self._in_flight[job.key] = server
                        return job
                if not self._pending and not self._in_flight:
                    return None
                self._cond.wait(poll)

    def finish(self, job):
        with self._cond:
            self._in_flight.pop(job.key, None)
            self._cond.notify_all()

    def requeue(self, job):
        with self._cond:
            self._in_flight.pop(job.key, None)
            self._pending.appendleft(job)
            self._cond.notify_all()

    def release_server(self, server: str):
        """`server` is given up: jobs waiting to be adopted there become ordinary jobs."""
        with self._cond:
            for job in self._pending:
                if job.attach is not None and job.attach[0] == server:
                    job.attach = None
            self._cond.notify_all()

    def sleep(self, seconds: float) -> bool:
        """Back-off pause that ends early once all work is finished or stopped; True if it did."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopped or (not self._pending and not self._in_flight), seconds)
            return self._stopped or (not self._pending and not self._in_flight)

    def stop(self):
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def pending(self) -> list:
        with self._cond:
            return list(self._pending)

    def counts(self) -> tuple[int, int]:
        with self._cond:
            return len(self._pending), len(self._in_flight)

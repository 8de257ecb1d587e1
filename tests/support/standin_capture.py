"""A capture backend for CPU tests of bridge/cuda_graph.py: the same interface as CudaGraphBackend,
where a "graph" is the captured closure re-run on its static input buffers. A replay therefore reads
exactly the buffers the wrapper filled, so an input that is not routed through a static buffer
shows up as a stale result; capture errors and replays that differ from the eager call can be
injected to exercise the fallbacks."""
from __future__ import annotations

import torch


class StandInGraph:
    def __init__(self, run, output, perturb):
        self.run, self.output, self.perturb = run, output, perturb
        self.pool_bytes = output.numel() * output.element_size()
        self.replays = 0

    def replay(self):
        self.replays += 1
        self.output.copy_(self.run())
        if self.perturb:
            self.output.add_(self.perturb)


class StandInCapture:
    name = "stand-in (CPU)"

    def __init__(self, device_type: str = "cpu", fail_with: Exception | None = None, perturb: float = 0.0):
        self.device_type = device_type
        self.fail_with = fail_with
        self.perturb = perturb
        self.captures = 0
        self.releases = 0
        self.graphs = []

    def unavailable_reason(self, device: torch.device):
        return None if device.type == self.device_type else f"not a {self.device_type} device ({device})"

    def capture(self, run, device):
        eager = run()
        if self.fail_with is not None:
            raise self.fail_with
        self.captures += 1
        graph = StandInGraph(run, run().clone(), self.perturb)
        self.graphs.append(graph)
        return graph, eager

    def release(self, device=None):
        self.releases += 1

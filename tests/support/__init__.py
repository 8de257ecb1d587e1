"""Test support imported by name from the repo root (`tests.support.comfy_host`, ...): the real
ComfyUI host in-process and as a headless server, random-weight UNets, a CDP browser driver, the
stand-in CUDA-graph capture backend. The benchmarks in bench/ and the demo in scripts/ share the host code."""

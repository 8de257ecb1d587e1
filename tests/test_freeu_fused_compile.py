"""The fused FreeU kernels compile for NVIDIA GPUs, checked on any machine.

The CPU suite runs the kernels through Triton's interpreter, which executes only the branches a call
takes and never type-checks the rest; the GPU compiles every branch of each specialisation. Here
every launch freeu.fused makes (recorded, not run) is compiled ahead of time for sm_90 and sm_80 with
the same argument types and constexprs, in a subprocess without TRITON_INTERPRET, one worker per core.
Triton caches what it compiled under $TRITON_CACHE_DIR (scripts/test.sh: .cache/triton), keyed by the
kernel source, options, target and Triton version: an unchanged kernel is not compiled again, an
edited one is."""
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from freeu import fused  # noqa: E402

pytestmark = pytest.mark.host_independent  # imports no ComfyUI: one leg of scripts/test.sh runs it

REPO = Path(__file__).resolve().parents[1]
_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int32: "*i32"}

COMPILE = r"""
import json, multiprocessing, os, sys
from concurrent.futures import ProcessPoolExecutor
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from freeu import _triton_kernel as kernels


def compile_one(job):
    name, sig, const, warps, pdl, arch = job
    fn = getattr(kernels, name)
    signature = {n: ("constexpr" if n in const else sig[i]) for i, n in enumerate(fn.arg_names)}
    src = ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
    try:
        triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "launch_pdl": pdl})
    except Exception as err:
        return f"{name} sm_{arch} {const}: {str(err)[-600:]}"
    return None


jobs = [(name, sig, const, warps, pdl, arch) for name, sig, const, warps, pdl in json.load(sys.stdin)
        for arch in ((90,) if const.get("PDL") else (90, 80))]  # griddepcontrol needs sm_90
# Each compile is CPU-bound (ptxas included): one worker per core this process may use.
workers = max(1, min(len(os.sched_getaffinity(0)), 8))
with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
    failed = [f for f in pool.map(compile_one, jobs, chunksize=2) if f]
print(json.dumps({"compiled": len(jobs), "failed": failed}))
"""


def _ptxas() -> bool:
    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


def _describe(arg):
    if torch.is_tensor(arg):
        return _TYPES[arg.dtype]
    return "fp32" if isinstance(arg, float) else "i32"


def recorded_launches(monkeypatch):
    launches = {}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def record(*args, num_warps, launch_pdl=False, **const):
                key = json.dumps([self.name, [_describe(a) for a in args], const, num_warps, launch_pdl],
                                 sort_keys=True)
                launches[key] = json.loads(key)
            return record

    monkeypatch.setattr(fused, "_kernel", Recorder("freeu_block_kernel"))
    cases = itertools.product((False, True), (torch.float16, torch.bfloat16, torch.float32), (32, 128),
                              ("v1", "v2"), (None, torch.ones(2)), ((1.3, 0.2), (1.0, 0.2), (1.3, 1.0)))
    # PDL: as on GPUs without / with programmatic dependent launch; sizes: one tile / several tiles
    # per skip plane; (b, s): both parts, filter only, scaling only
    for pdl, dtype, size, version, sigmas, (b, s) in cases:
        monkeypatch.setattr(fused, "_PDL", pdl)
        h, hsp = torch.zeros(2, 16, size, size, dtype=dtype), torch.zeros(2, 8, size, size, dtype=dtype)
        assert fused.freeu_block(h, hsp, b, s, 1, version, sigmas, 0.0, math.inf)
    return list(launches.values())


@pytest.mark.skipif(not _ptxas(), reason="this Triton build carries no ptxas")
def test_every_launch_compiles_for_sm90_and_sm80(monkeypatch):
    launches = recorded_launches(monkeypatch)
    assert {(c["V2"], c["MAP"], c["GATED"]) for _, _, c, _, _ in launches} == {
        (v2, m, g) for v2 in (False, True) for m in ((False, True) if v2 else (False,)) for g in (False, True)}
    # v2's first launch lets the second start (1); the second is made with launch_pdl (2)
    assert {(c["PDL"], pdl) for _, _, c, _, pdl in launches} == {(0, False), (1, False), (2, True)}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", COMPILE], input=json.dumps(launches), capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["compiled"] == sum(1 if c["PDL"] else 2 for _, _, c, _, _ in launches)
    assert not result["failed"], "\n".join(result["failed"])

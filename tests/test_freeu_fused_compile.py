"""The fused FreeU kernels compile for NVIDIA GPUs, checked on any machine.

The CPU suite runs the kernels through Triton's interpreter, which executes only the branches a call
takes and never type-checks the rest; the GPU compiles every branch of each specialisation. Here
every launch freeu.fused makes (recorded, not run) is compiled ahead of time for sm_90 and sm_80 with
the same argument types and constexprs, in a subprocess without TRITON_INTERPRET."""
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

REPO = Path(__file__).resolve().parents[1]
_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int32: "*i32"}

COMPILE = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from freeu import _triton_kernel as kernels
failed = []
for name, sig, const, warps in json.load(sys.stdin):
    fn = getattr(kernels, name)
    signature = {n: ("constexpr" if n in const else sig[i]) for i, n in enumerate(fn.arg_names)}
    src = ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
    for arch in (90, 80):
        try:
            triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
        except Exception as err:
            failed.append(f"{name} sm_{arch} {const}: {str(err)[-600:]}")
print(json.dumps(failed))
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
            def record(*args, num_warps, **const):
                key = json.dumps([self.name, [_describe(a) for a in args], const, num_warps], sort_keys=True)
                launches[key] = json.loads(key)
            return record

    monkeypatch.setattr(fused, "_kernel", Recorder("freeu_block_kernel"))
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for size in (32, 128):  # one tile / several tiles per skip plane
            h, hsp = torch.zeros(2, 16, size, size, dtype=dtype), torch.zeros(2, 8, size, size, dtype=dtype)
            for version in ("v1", "v2"):
                for sigmas in (None, torch.ones(2)):
                    for b, s in ((1.3, 0.2), (1.0, 0.2), (1.3, 1.0)):  # both parts, filter only, scaling only
                        assert fused.freeu_block(h, hsp, b, s, 1, version, sigmas, 0.0, math.inf)
    return list(launches.values())


@pytest.mark.skipif(not _ptxas(), reason="this Triton build carries no ptxas")
def test_every_launch_compiles_for_sm90_and_sm80(monkeypatch):
    launches = recorded_launches(monkeypatch)
    assert {(c["V2"], c["MAP"], c["GATED"]) for _, _, c, _ in launches} == {
        (v2, m, g) for v2 in (False, True) for m in ((False, True) if v2 else (False,)) for g in (False, True)}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", COMPILE], input=json.dumps(launches), capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    failed = json.loads(out.stdout.strip().splitlines()[-1])
    assert not failed, "\n".join(failed)

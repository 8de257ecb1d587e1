"""The guided fine-tune check (bench/check_finetune_cfg.py) as a command: its class-conditional
pretraining draw, its saved base reused by the next run to the bit, and its arguments named."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _check(tmp_path, out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bench.check_finetune_cfg", "--tiny", "--base-dir", str(tmp_path / "bases"),
           "--out", str(tmp_path / out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads((tmp_path / out / "check_finetune_cfg.json").read_text())["cells"]


def test_a_saved_base_is_reused_to_the_bit_and_both_loras_are_scored(tmp_path):
    out, first = _check(tmp_path, "a")
    assert "pretrained 20 steps" in out and "| gmm8-s0.3 | 3 | 6 | 0 |" in out
    out, second = _check(tmp_path, "b")
    assert "base loaded from" in out
    (a,), (b,) = first, second
    for key in ("sigmas", "untuned", "lora@1", "lora@w", "reference_in_class"):
        assert a[key] == b[key], key  # the same base, noises and training: the same numbers (CPU)
    assert a["lora@w"]["gap"] != a["lora@1"]["gap"]  # trained at CFG 3, not at CFG 1
    for label in ("lora@1", "lora@w"):
        assert set(a[label]) == {"gap", "gap_median", "fd", "flips", "in_class", "check"} and a[label + "_s"] > 0


@pytest.mark.parametrize("bad, match", [(["--cfgs", "1"], "--cfgs"), (["--prompt-class", "2"], "--prompt-class"),
                                        (["--method-seeds", "-1"], "--method-seeds")])
def test_bad_arguments_are_named_before_anything_runs(bad, match):
    proc = subprocess.run([sys.executable, "-m", "bench.check_finetune_cfg", "--tiny", *bad], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and match in proc.stderr, proc.stderr[-2000:]


def test_class_draw_gives_each_row_its_components_prompt_or_the_empty_one(comfy, one_thread):
    _, pack = comfy
    from bench import check_finetune_cfg as check
    from bench import study_finetune_gmm as study
    study.EXACT = importlib.import_module(pack.__name__ + ".samplers.exact")
    spec = study.EXACT.MixtureSpec("gmm", 8, 0.1, 1)
    tokens = check.prompt_tokens()
    x0, ctx = check.class_draw(spec, (4, 4, 4), tokens)(4000, torch.Generator().manual_seed(0))
    mu = study.EXACT.mixture_means(spec, (4, 4, 4)).float().flatten(1)
    component = torch.cdist(x0.flatten(1), mu).argmin(1)  # spread 0.1: each row sits at its own component
    empty = (ctx == 0).all(-1).all(-1)
    assert 0.17 < float(empty.double().mean()) < 0.23  # DROP = 0.2
    assert torch.equal(ctx[~empty], tokens[component[~empty] % check.CLASSES])
    one = check.class_samples(spec, (4, 4, 4), 1, 500, torch.Generator().manual_seed(1))
    assert bool((torch.cdist(one.flatten(1), mu).argmin(1) % check.CLASSES == 1).all())


def test_pretraining_steps_use_the_draws_prompts(comfy, one_thread):
    from bench.study_pretrain import Stepper
    from tests.support.tiny_unet import tiny_unet
    cpu = torch.device("cpu")
    model = tiny_unet(seed=0)
    ctx = torch.randn(8, 1, 16, generator=torch.Generator().manual_seed(2))
    stepper = Stepper(model, lambda count, gen: (torch.randn(count, 4, 8, 8, generator=gen), ctx[:count]), 8, cpu)
    *_, seen = stepper._batch(torch.Generator().manual_seed(0))
    assert torch.equal(seen, ctx)
    plain = Stepper(model, lambda count, gen: torch.randn(count, 4, 8, 8, generator=gen), 8, cpu)
    *_, seen = plain._batch(torch.Generator().manual_seed(0))
    assert torch.equal(seen, torch.zeros(8, 1, 16))  # an unconditional draw keeps the empty prompt

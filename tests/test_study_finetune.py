"""The Phase 2 ground-truth study (bench/study_finetune_gmm.py) as a command: a base model saved by
one run with --base-dir is the model the next run studies, so a long pretraining can be done once
(one device session) and studied later."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _study(tmp_path, out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bench.study_finetune_gmm", "--tiny", "--controls-only", "--families", "gmm8-s0.1",
           "--base-dir", str(tmp_path / "bases"), "--out", str(tmp_path / out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / out / "study_finetune_gmm.json").read_text())["families"]["gmm8-s0.1"]


def test_a_saved_base_model_is_loaded_by_the_next_run_and_studied_unchanged(tmp_path):
    first = _study(tmp_path, "a")
    assert first["base_saved"].startswith("gmm8-s0.1-w32-r1-s4-p20-") and first["pretrain_s"] > 0
    second = _study(tmp_path, "b")
    assert second["base_loaded"] == first["base_saved"] and second["pretrain_s"] == 0.0
    # the same network and the same sampling noise: the same scores, to the bit (CPU)
    assert second["base_ref"] == first["base_ref"]
    assert second["uniform_ref"] == first["uniform_ref"]
    # other pretraining settings are another model: pretrained again, not loaded
    third = _study(tmp_path, "c", "--pretrain-steps", "21")
    assert "base_loaded" not in third and third["base_saved"].startswith("gmm8-s0.1-w32-r1-s4-p21-")


def _fixed_study(tmp_path, out, rounds, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bench.study_finetune_gmm", "--tiny", "--no-controls", "--families", "gmm8-s0.1",
           "--fixed", "0:1e-3:0.5:eps:cosine:0:trajectory:model", "--rounds", str(rounds), "--diagnose", "0",
           "--base-dir", str(tmp_path / "bases"), "--out", str(tmp_path / out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / out / "study_finetune_gmm.json").read_text())["families"]["gmm8-s0.1"]


def test_alternation_scores_its_first_round_as_the_one_round_run_does(tmp_path):
    """With --fixed and --rounds 2 the study trains once: round 1 is scored as P1+2 on the way, the
    same numbers as a run of one round, and the alternation goes on from it."""
    one, alt = _fixed_study(tmp_path, "one", 1)["rows"]["5"], _fixed_study(tmp_path, "alt", 2)["rows"]["5"]
    assert "alt2" not in one and "alt2" in alt and "alt2_folds" in alt
    for key in ("P1", "P1+2", "P1+2_ref", "P1+2_folds", "P1+2_loss"):
        assert alt[key] == one[key], key
    assert alt["alt_rounds"][0]["sigmas"] == alt["P1_sigmas"] and len(alt["alt_rounds"]) == 2
    assert alt["alt_rounds"][0]["loss_last"] == one["P1+2_loss"][1]  # --tiny: 4 steps, the tail mean is the last loss
    assert alt["alt2"] != alt["P1+2"]  # round 2 trained further


# --- pretraining steps (bench/study_pretrain.py) and the parallel run (bench/study_finetune_parallel.py)

def _pretrain_env(comfy):
    import importlib
    import torch
    from bench import study_finetune_gmm as study
    nodes, pack = comfy
    study.EXACT = importlib.import_module(pack.__name__ + ".samplers.exact")  # what study.load sets
    spec = study.EXACT.MixtureSpec("gmm", 8, 0.3, 0)
    model = study.build_unet(32, 1, torch.device("cpu"), seed=0)
    draw = lambda count, gen: study.mixture_sample(spec, (4, 4, 4), count, gen)
    fin = importlib.import_module(pack.__name__ + ".bridge.finetune")
    return model, draw, fin


def _grads(model, stepper, seed):
    import torch
    net = model.model.diffusion_model
    for p in net.parameters():
        p.requires_grad_(True)
        p.grad = None
    with torch.inference_mode(False), torch.enable_grad():
        loss = stepper.loss(torch.Generator().manual_seed(seed))
        loss.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    for p in net.parameters():
        p.requires_grad_(False)
        p.grad = None
    return float(loss.detach()), grads


def test_graph_mode_steps_are_the_eager_steps_and_a_failed_capture_falls_back(comfy, one_thread):
    """The graph mode calls the network directly (eps from the scaled input and the timestep) instead of
    through apply_model: on the same batch it must give the same loss and gradients. The capture itself
    needs CUDA; the identity stands in for it here."""
    import torch
    from bench.study_pretrain import Stepper
    model, draw, _ = _pretrain_env(comfy)
    cpu = torch.device("cpu")
    eager = Stepper(model, draw, 8, cpu, "eager")
    graph = Stepper(model, draw, 8, cpu, "graph", capture=lambda module, args: module)
    assert (eager.mode, graph.mode, graph.fallback) == ("eager", "graph", None)
    loss_e, grads_e = _grads(model, eager, 5)
    loss_g, grads_g = _grads(model, graph, 5)
    assert loss_e == pytest.approx(loss_g, rel=1e-5) and loss_e > 0
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(grads_e, grads_g))
    said = []
    no_cuda = Stepper(model, draw, 8, cpu, "graph", log=said.append)
    assert no_cuda.mode == "eager" and "needs a CUDA device" in no_cuda.fallback and said

    def broken(module, args):
        raise RuntimeError("operation not permitted when stream is capturing")
    failed = Stepper(model, draw, 8, cpu, "graph", capture=broken, log=said.append)
    assert failed.mode == "eager" and "stream is capturing" in failed.fallback
    assert _grads(model, failed, 5)[0] == loss_e
    # a captured call that does not compute what apply_model computes (another model type) is not trained on
    off = Stepper(model, draw, 8, cpu, "graph", capture=lambda module, args: (lambda x, t, c: 1.1 * module(x, t, c)),
                  log=said.append)
    assert off.mode == "eager" and "differs from apply_model" in off.fallback
    with pytest.raises(ValueError, match="mode"):
        Stepper(model, draw, 8, cpu, "fast")
    with pytest.raises(ValueError, match="amp"):
        Stepper(model, draw, 8, cpu, "eager", amp="fp8")


def test_pretrain_leaves_the_moving_average_of_the_weights_and_scores_it_on_the_way(comfy, one_thread):
    import copy
    import torch
    from bench.study_pretrain import Stepper, optimiser, pretrain
    model, draw, fin = _pretrain_env(comfy)
    cpu = torch.device("cpu")
    start = copy.deepcopy(model.model.diffusion_model.state_dict())
    seen = []

    def evaluate(step):  # the weights evaluated are the average so far, not the live ones
        seen.append([p.detach().clone() for p in model.model.diffusion_model.parameters()])
        return {"fd": float(step)}
    run = pretrain(model, draw, 4, 8, 1e-3, cpu, 0, lambda m: None, fin.lr_factor, ema=0.5, evaluate=evaluate, evals=2)
    assert run["steps"] == 4 and run["mode"] == "eager" and [i for i, _ in run["curve"]] == [2, 4]
    trained = [p.detach().clone() for p in model.model.diffusion_model.parameters()]
    # the same steps by hand, averaging as documented: decay min(ema, (1+i)/(10+i))
    model.model.diffusion_model.load_state_dict(start)
    params = list(model.model.diffusion_model.parameters())
    for p in params:
        p.requires_grad_(True)
    average = [p.detach().clone() for p in params]
    with torch.inference_mode(False), torch.enable_grad():
        stepper, opt, gen = Stepper(model, draw, 8, cpu), optimiser(params, 1e-3, cpu), torch.Generator().manual_seed(0)
        for i in range(4):
            stepper.step(opt, gen, 1e-3 * fin.lr_factor(i, 4, "cosine"))
            d = min(0.5, (1 + i) / (10 + i))
            average = [d * a + (1 - d) * p.detach() for a, p in zip(average, params)]
            if i == 1:
                assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(average, seen[0]))
    live = [p.detach() for p in params]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(average, trained))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(live, trained))
    for p in params:
        p.requires_grad_(False)


def test_parallel_run_picks_on_the_first_family_and_reports_that_candidate_on_the_others(tmp_path):
    from bench.study_finetune_gmm import pick
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bench.study_finetune_parallel", "--out", str(tmp_path / "p"), "--families",
           "gmm8-s0.3", "gmm8-s0.1", "--", "--tiny", "--rounds", "1", "--pretrain-budget-s", "2",
           "--base-dir", str(tmp_path / "bases")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "p" / "study_finetune_gmm.json").read_text())
    dev, val = res["families"]["gmm8-s0.3"], res["families"]["gmm8-s0.1"]
    ratios, label = pick(dev, res["args"]["sweep"], res["args"]["choose_steps"])
    assert res["chosen"]["label"] == label == dev["chosen"] and "chosen" not in val
    for fam in (dev, val):
        for row in fam["rows"].values():
            assert all(f"P1+2[{c}]" in row for c in res["args"]["sweep"])  # every family ran every candidate
            assert row["P1+2"] == row[f"P1+2[{label}]"]
        # the step count fitted in the time budget names the saved base
        assert fam["base_saved"].split("-p")[1].startswith(f"{fam['pretrain_steps']}-")
    assert "(picked)" in proc.stdout and "**gmm8-s0.1** (validation" in proc.stdout
    # every score carries the distance without its finite-sample offset, and the table shows its ratio
    assert all("fd_inf" in row["P1"] and "fd_inf" in row["P1+2"] for fam in (dev, val) for row in fam["rows"].values())
    assert "FD_inf P1 → P1+2 (ratio)" in proc.stdout and "extrapolated" in proc.stdout
    # the trajectory candidate is measured against its teacher at every N (--tiny sets --diagnose)
    traj = next(c for c in res["args"]["sweep"] if ":trajectory" in c)
    for fam in (dev, val):
        for row in fam["rows"].values():
            diag = row[f"P1+2[{traj}]_diag"]
            assert len(diag["step_loss"]["tuned"]) == len(row["P1_sigmas"]) - 1 == len(diag["weights"])
            assert "fd_inf" in diag["teacher"] and diag["gap_rms"]["tuned"] >= 0
            # every method is paired with Phase 1 on disjoint quarters of the same noises
            assert len(row[f"P1+2[{traj}]_folds"]) == 4 and all(v > 0 for v in row[f"P1+2[{traj}]_folds"])
    # a later merge of the same parts picks the same; without the development family's part it refuses
    from bench.study_finetune_parallel import merge
    assert merge(tmp_path / "p")["chosen"]["label"] == label
    (tmp_path / "p" / "gmm8-s0.3" / "study_finetune_gmm.json").unlink()
    with pytest.raises(SystemExit, match="development family gmm8-s0.3"):
        merge(tmp_path / "p")


def test_state_check_scores_each_model_alike_on_every_sampling(comfy, tmp_path):
    """bench/check_finetune_state.py, CPU, tiny: a base saved to a file, a uniform and a Phase 2 LoRA, each
    sampled several times in one process; each model carries its own adapters and only those."""
    import torch
    from bench.study_finetune_gmm import build_unet
    model = build_unet(32, 1, torch.device("cpu"), seed=0)
    torch.save(model.model.diffusion_model.state_dict(), tmp_path / "base.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bench.check_finetune_state", "--cpu", "--base", str(tmp_path / "base.pt"), "--width", "32",
           "--res-blocks", "1", "--size", "4", "--samples", "64", "--lora-steps", "3", "--lora-batch", "8",
           "--train-images", "64", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "check_finetune_state.json").read_text())
    assert res["consistent"] and all(res["consistent"].values())
    owners = {e["model"]: e["wrappers_after"] for e in res["log"]}
    assert owners == {"base": [], "uniform": ["uniform"], "phase2": ["phase2"]}
    fds = {e["model"]: e["fd"] for e in res["log"] if e["steps"] == 32}
    assert len(set(fds.values())) == 3  # the three models differ: the LoRAs were trained and are applied


def test_a_method_seed_redraws_the_methods_on_the_same_base(tmp_path):
    """--method-seed is a replicate of Phase 1, the LoRA, its teacher and the scoring noises on the base
    network already trained (--replicate would pretrain another)."""
    first, again = _fixed_study(tmp_path, "a", 1), _fixed_study(tmp_path, "b", 1, "--method-seed", "1")
    assert again["base_loaded"] == first["base_saved"] and again["pretrain_s"] == 0.0
    assert again["method_seed"] == 1 and "method_seed" not in first
    a, b = first["rows"]["5"], again["rows"]["5"]
    assert a["P1_sigmas"][0] == b["P1_sigmas"][0] and a["P1_sigmas"][-1] == b["P1_sigmas"][-1] == 0.0
    for key in ("P1", "P1+2", "P1+2_loss"):  # other draws, other numbers
        assert a[key] != b[key], key
    assert first["base_ref"] != again["base_ref"]  # the scoring noises moved too


def test_a_negative_seed_offset_is_named_before_anything_runs():
    for flag in ("--method-seed", "--replicate"):
        proc = subprocess.run([sys.executable, "-m", "bench.study_finetune_gmm", "--tiny", flag, "-1"], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and f"{flag}: must be >= 0" in proc.stderr, proc.stderr[-2000:]

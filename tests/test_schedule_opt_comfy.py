"""Optimised-schedule nodes inside the real ComfyUI: the guider path, the JSON cache (hit, miss, key
changes, damaged files), the load node, the `fewstep_optimized` dropdown entry, cancel and bad input.
The lab model counts its model evaluations (net.calls), so 'returns at once' is checked by counting,
not timing."""
import json
import os

import pytest
import torch

SMALL = dict(grid=16)


@pytest.fixture()
def env(lab_user, tmp_path):
    e, M = lab_user, lab_user.M
    e.opt = M["FewStepOptimizeSchedule"]
    e.load = M["FewStepLoadOptimizedSchedule"]
    e.net = lambda model=None: (model or e.model).model.diffusion_model
    e.files = lambda: sorted(os.listdir(tmp_path / "fewstep" / "schedules")) if (tmp_path / "fewstep" / "schedules").exists() else []
    e.optimise = lambda *a, **kw: _result(e.opt.execute(*a, **kw))
    e.load_ = lambda *a: _result(e.load.execute(*a))
    e.run = lambda model=None, cfg=1.0, steps=3, sampler="dpmpp_2m", mc=2, seed=0, **kw: e.optimise(
        model or e.model, e.cond, e.cond, cfg, 64, 64, steps, sampler, mc, seed, **{**SMALL, **kw})
    return e


def _result(out):
    """Nodes return io.NodeOutput(sigmas, model, report, ui=...); the UI carries the sigmas for the editor graph."""
    assert out.ui["fewstep_sigmas"] == [float(v) for v in out.result[0].double().tolist()]
    return out.result


def _calculate(model, steps):
    import comfy.samplers
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "fewstep_optimized", steps)


def test_optimise_runs_through_the_guider_and_caches(env, caplog):
    import logging
    with caplog.at_level(logging.INFO):
        sig, model_out, report = env.run()
    calls = env.net().calls
    assert calls == (16 - 1) + 1 + 3 * 5  # teacher + 3 steps x (4 DP variants + Karras)
    # The calls were stated before the teacher pass (log line) and in the report.
    assert f"{calls} model calls at most: teacher 16 + selection 15" in caplog.text
    assert f"model calls {calls}, planned at most {calls}" in report
    assert sig.shape == (4,) and float(sig[-1]) == 0 and (sig[1:] < sig[:-1]).all()
    assert float(sig[0]) == pytest.approx(14.6146, rel=1e-4) and float(sig[-2]) >= 0.0291
    assert "cache:" in report and len(env.files()) == 1
    rec = json.loads((env.user / "fewstep" / "schedules" / env.files()[0]).read_text())
    assert rec["key"]["sampler"] == "dpmpp_2m" and rec["key"]["latent"] == [4, 8, 8]
    assert set(rec["dp"]) == {"jump1p", "jump2p", "jump1w", "jump2w"}
    assert len(rec["dp"]["jump1p"]["paths"]) == 16  # every N up to the grid
    assert rec["cost_rule"] == "dpmpp_2m" and rec["rule_exact"]
    # Second run: the same schedule from the file, no model call.
    sig2, _, report2 = env.run()
    assert env.net().calls == calls and torch.equal(sig, sig2) and "cached" in report2
    # Another N with the same key: the same file gains a selected schedule.
    env.run(steps=5)
    assert env.net().calls > calls and len(env.files()) == 1
    rec = json.loads((env.user / "fewstep" / "schedules" / env.files()[0]).read_text())
    assert set(rec["selected"]) == {"3", "5"}


def test_guard_uses_noises_the_choice_did_not_see_at_no_extra_calls(env):
    # holdout 0 and 4 noises: 2 fit the DP and the ranking, 2 only test against Karras (issue 18).
    sig, _, report = env.run(mc=4, steps=3)
    assert env.net().calls == (16 - 1) + 1 + 3 * 5  # the same batched calls as without the split
    rec = json.loads((env.user / "fewstep" / "schedules" / env.files()[0]).read_text())
    sel = rec["selected"]["3"]
    assert len(sel["train_errors"]) == 5
    if sel["chosen"] != "karras" or "guard" in sel:
        guard = sel["guard"]
        assert guard["on"] == "guard split" and guard["against"] == "karras"
        assert "test against karras on the guard split noises" in report
        assert sel["chosen"] == (guard["candidate"] if guard["kept"] else "karras")
    # More noises than the model batch (8): every pass goes through the model in two batches.
    before = env.net().calls
    env.run(mc=10, steps=3)
    assert env.net().calls - before == 2 * ((16 - 1) + 1 + 3 * 5)


def test_key_changes_make_new_files(env):
    env.run()
    n = env.net().calls
    env.run(seed=1)
    env.run(cfg=3.0)
    env.run(sampler="euler")
    env.run(grid=20)
    assert len(env.files()) == 5 and env.net().calls > n
    # cfg = 1 skips the negative prompt, so it is not part of the key; at cfg 3 it is.
    other_neg = [[torch.ones((1, 1, 8)), {}]]
    calls = env.net().calls
    env.optimise(env.model, env.cond, other_neg, 1.0, 64, 64, 3, "dpmpp_2m", 2, 0, **SMALL)
    assert env.net().calls == calls
    env.optimise(env.model, env.cond, other_neg, 3.0, 64, 64, 3, "dpmpp_2m", 2, 0, **SMALL)
    assert env.net().calls > calls and len(env.files()) == 6
    # A different model (other data set) and a patched model are other keys.
    other = env.nodes.NODE_CLASS_MAPPINGS["FewStepLabModel"].execute("gmm", 8, 0.3, 1, "sd_discrete")[0]
    env.run(model=other)
    assert len(env.files()) == 7


def test_model_patches_are_seen_by_the_teacher_and_change_the_key(env):
    seen = []

    def wrapper(apply_model, args):
        seen.append(1)
        return apply_model(args["input"], args["timestep"], **args["c"])

    patched = env.model.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    env.run()
    env.run(model=patched)
    assert len(seen) > 16 and len(env.files()) == 2


def test_dropdown_scheduler_uses_the_schedule_of_the_current_model(env):
    import comfy.samplers
    assert "fewstep_optimized" in comfy.samplers.KSampler.SCHEDULERS
    fresh = env.nodes.NODE_CLASS_MAPPINGS["FewStepLabModel"].execute("gmm", 8, 0.3, 5, "sd_discrete")[0]
    with pytest.raises(ValueError, match="no optimised schedule is known.*Optimise Schedule"):
        _calculate(fresh, 3)
    sig, model_out, _ = env.run()
    # Through the node's MODEL output (attached) and through the same checkpoint (registry).
    assert torch.allclose(_calculate(model_out, 3), sig)
    assert torch.allclose(_calculate(env.model, 3), sig)
    assert torch.allclose(_calculate(env.model.clone(), 3), sig)
    # Other N come from the stored DP paths.
    other = _calculate(model_out, 6)
    assert other.shape == (7,) and float(other[-1]) == 0 and (other[1:] < other[:-1]).all()
    with pytest.raises(ValueError, match="covers 1..16 steps"):
        _calculate(model_out, 17)
    out = env.nodes.common_ksampler(model_out, 0, 3, 1.0, "dpmpp_2m", "fewstep_optimized", env.cond, env.cond,
                                    {"samples": torch.zeros(1, 4, 8, 8)})[0]["samples"]
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_load_node_latest_by_name_and_wrong_model(env):
    sig, _, _ = env.run()
    got, model_out, report = env.load_(env.model, "latest for this model", 3)
    assert torch.allclose(got, sig) and "selected" in report
    assert torch.allclose(_calculate(model_out, 3), sig)
    name = env.files()[0]
    assert name in env.load.INPUT_TYPES()["required"]["schedule"][1]["options"]
    got2, _, _ = env.load_(env.model, name, 3)
    assert torch.allclose(got2, sig)
    other = env.nodes.NODE_CLASS_MAPPINGS["FewStepLabModel"].execute("gmm", 8, 0.3, 9, "sd_discrete")[0]
    with pytest.raises(ValueError, match="another model"):
        env.load_(other, name, 3)
    with pytest.raises(ValueError, match="no optimised schedule for this model"):
        env.load_(other, "latest for this model", 3)
    with pytest.raises(ValueError, match="not a FewStep schedule file name"):
        env.load_(env.model, "../../etc/passwd.json", 3)


@pytest.mark.parametrize("damage", ["truncate", "edit_key", "bad_sigmas", "wrong_format"])
def test_damaged_cache_files_give_clear_errors(env, damage):
    env.run()
    path = env.user / "fewstep" / "schedules" / env.files()[0]
    text = path.read_text()
    rec = json.loads(text)
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "edit_key":
        rec["key"]["cfg"] = 9.0
        path.write_text(json.dumps(rec))
    elif damage == "bad_sigmas":
        rec["selected"]["3"]["sigmas"] = [1.0, 2.0, 0.5, 0.0]
        path.write_text(json.dumps(rec))
    else:
        rec["format"] = "something-else"
        path.write_text(json.dumps(rec))
    calls = env.net().calls
    with pytest.raises(ValueError, match="Delete it"):
        env.run()
    with pytest.raises(ValueError, match="Delete it"):
        env.load_(env.model, path.name, 3)
    assert env.net().calls == calls  # refused before any model call
    # 'latest' skips the damaged file rather than failing on it.
    with pytest.raises(ValueError, match="no optimised schedule for this model"):
        env.load_(env.model, "latest for this model", 3)


def test_bad_inputs_are_refused_before_any_model_call(env):
    calls = env.net().calls
    with pytest.raises(ValueError, match="larger than the candidate grid"):
        env.run(steps=20)
    with pytest.raises(ValueError, match="negative: the conditioning is empty"):
        env.optimise(env.model, env.cond, [], 5.0, 64, 64, 3, "dpmpp_2m", 2, 0, **SMALL)
    with pytest.raises(ValueError, match="positive: the conditioning is empty"):
        env.optimise(env.model, [], env.cond, 1.0, 64, 64, 3, "dpmpp_2m", 2, 0, **SMALL)
    with pytest.raises(ValueError, match="sigma_max=80 is outside the model's sigma range"):
        env.run(sigma_max=80.0)
    with pytest.raises(ValueError, match="sigma_min=0.001 is outside"):
        env.run(sigma_min=0.001)
    with pytest.raises(ValueError, match="smaller than sigma_max"):
        env.run(sigma_max=1.0, sigma_min=2.0)
    with pytest.raises(ValueError, match="not a deterministic ODE sampler"):
        env.run(sampler="euler_ancestral")
    with pytest.raises(ValueError, match="needs holdout"):
        env.run(refine_sweeps=1)
    assert env.net().calls == calls and env.files() == []
    # Empty negative is fine at cfg 1 (CFG does not use it).
    env.optimise(env.model, env.cond, [], 1.0, 64, 64, 3, "dpmpp_2m", 2, 0, **SMALL)


def test_cancel_stops_cleanly_and_writes_nothing(env):
    import comfy.model_management
    import comfy.utils
    updates = []
    old_hook = comfy.utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, node_id=None):
        updates.append(value)
    # Cancel after the 5th model call (what the UI's cancel does), counted on the model: ComfyUI 0.33
    # passes progress updates to the hook at most every 100 ms, so they cannot time it.
    net = env.net()
    forward = net.forward

    def cancel_after_five(*args, **kwargs):
        out = forward(*args, **kwargs)
        if net.calls >= 5:
            comfy.model_management.interrupt_current_processing(True)
        return out
    net.forward = cancel_after_five
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            env.run()
    finally:
        del net.forward
        comfy.utils.set_progress_bar_global_hook(old_hook)
        comfy.model_management.interrupt_current_processing(False)
    assert env.files() == [] and env.net().calls <= 6
    assert all(b >= a for a, b in zip(updates, updates[1:]))
    sig, _, _ = env.run()  # a later run is unaffected
    assert sig.shape == (4,) and len(env.files()) == 1


def test_sampler_names_map_to_solver_traits(env):
    """The dropdown names are mapped on the ComfyUI side (bridge/solver_traits.py); the maths sees traits."""
    import importlib
    traits_for = importlib.import_module(env.pack.__name__ + ".bridge.solver_traits").traits_for
    so = importlib.import_module(env.pack.__name__ + ".samplers.schedule_opt")
    assert traits_for("dpmpp_2m") == traits_for("fewstep_dpmpp_2m") == so.DPMPP_2M
    assert traits_for("euler").exact and traits_for("ddim").rule == "euler" and traits_for("fewstep_dpmpp_1s").exact
    assert traits_for("fewstep_deis_tab3") == so.SolverTraits(3, True) and not traits_for("fewstep_deis_tab3").exact
    assert traits_for("uni_pc").rule == "dpmpp_2m" and traits_for("heun").rule == "euler"
    assert traits_for("fewstep_deis_rhork3").order == 3
    for name in env.opt.INPUT_TYPES()["required"]["sampler"][0]:
        traits_for(name)  # every dropdown entry the node offers has traits
    env.run(sampler="lms")
    rec = json.loads((env.user / "fewstep" / "schedules" / env.files()[0]).read_text())
    assert rec["cost_rule"] == "dpmpp_2m" and not rec["rule_exact"]


def test_refinement_and_latent_input(env, caplog):
    import logging
    with caplog.at_level(logging.INFO):
        sig, _, report = env.optimise(env.model, env.cond, env.cond, 1.0, 8, 8, 3, "euler", 2, 0,
                                      latent={"samples": torch.zeros(1, 4, 6, 6)}, grid=12, holdout=2,
                                      refine_sweeps=1, refine_candidates=2)
    rec = json.loads((env.user / "fewstep" / "schedules" / env.files()[0]).read_text())
    assert rec["key"]["latent"] == [4, 6, 6] and rec["key"]["refine"] == [1, 2, "golden", "mean", 3]
    hist = rec["selected"]["3"]["refine_history"]
    assert hist["start"] in rec["selected"]["3"]["train_errors"] and "held-out" in report
    assert f"refined from {hist['start']}" in report
    assert float(sig[-1]) == 0 and (sig[1:] < sig[:-1]).all()
    # Refinement's cost is stated before the run: an upper bound the run stays within.
    planned = rec["selected"]["3"]["planned_calls"]
    assert f"{planned} model calls at most" in caplog.text and "refinement <=" in caplog.text
    assert rec["selected"]["3"]["calls"] <= planned
    # The search and objective are part of the key (another file), and bad values are named.
    env.optimise(env.model, env.cond, env.cond, 1.0, 8, 8, 3, "euler", 2, 0,
                 latent={"samples": torch.zeros(1, 4, 6, 6)}, grid=12, holdout=2, refine_sweeps=1,
                 refine_candidates=2, refine_search="grid", refine_objective="geomean")
    assert len(env.files()) == 2
    # One start: the key of files made before multi-start existed (no starts entry), another file.
    env.optimise(env.model, env.cond, env.cond, 1.0, 8, 8, 3, "euler", 2, 0,
                 latent={"samples": torch.zeros(1, 4, 6, 6)}, grid=12, holdout=2, refine_sweeps=1,
                 refine_candidates=2, refine_starts=1)
    keys = [json.loads((env.user / "fewstep" / "schedules" / f).read_text())["key"]["refine"] for f in env.files()]
    assert len(keys) == 3 and [1, 2, "golden", "mean"] in keys
    with pytest.raises(ValueError, match="refine_starts"):
        env.optimise(env.model, env.cond, env.cond, 1.0, 8, 8, 3, "euler", 2, 0, grid=12, holdout=2,
                     refine_sweeps=1, refine_starts=0)
    with pytest.raises(ValueError, match="refine_search"):
        env.optimise(env.model, env.cond, env.cond, 1.0, 8, 8, 3, "euler", 2, 0, grid=12, holdout=2,
                     refine_sweeps=1, refine_search="newton")

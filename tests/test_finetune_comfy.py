"""Phase 2 fine-tune inside the real ComfyUI (CPU): a training step through ComfyUI's guider and
adapters on a tiny UNet, the LoRA round trip through core SaveLoRA / LoraModelLoader, the node run by
ComfyUI's own executor function under inference mode (as the server runs it), alternation and the
errors for bad input."""
import glob
import importlib
import os
import re

import pytest
import torch

from tests.support.finetune_node import node_inputs, run_node
from tests.support.tiny_unet import empty_conditioning, tiny_unet

SCHED = torch.tensor([14.6146, 3.0, 0.7, 0.0])


@pytest.fixture(scope="module")
def env(comfy):
    nodes, pack = comfy
    fin = importlib.import_module(pack.__name__ + ".bridge.finetune")

    class Env:
        pass
    e = Env()
    e.nodes, e.pack, e.fin = nodes, pack, fin
    e.model = tiny_unet(seed=0)
    e.cond = empty_conditioning()
    e.latents = {"samples": torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(3))}
    e.settings = lambda **kw: fin.TrainSettings(**{**dict(steps=1, batch_size=3, learning_rate=5e-3, rank=4,
                                                            training_dtype="fp32", lora_dtype="fp32",
                                                            gradient_checkpointing=False, seed=0), **kw})
    return e


def _denoised(model, x, sigma, cond):
    """D(x; sigma) through ComfyUI's sampling path: one Euler step from sigma to 0."""
    import comfy.sample
    import comfy.samplers
    sampler = comfy.samplers.sampler_object("euler")
    sig = torch.tensor([float(sigma), 0.0])
    return comfy.sample.sample_custom(model, x / float(sigma), 1.0, sampler, sig, cond, cond, torch.zeros_like(x),
                                      disable_pbar=True, seed=0)


def _fixed_batch(latents, sigma=0.7):
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(9))
    sig = torch.full((latents.shape[0],), sigma, dtype=torch.float64)
    return noise, sig


def test_one_step_changes_the_lora_and_lowers_the_loss_on_a_fixed_batch(env, one_thread):
    trainer = env.fin.LoraTrainer(env.model, env.settings(gradient_checkpointing=True))
    data = env.latents["samples"][:3]
    noise, sig = _fixed_batch(data)
    downs = {k: v.detach().clone() for k, v in trainer.lora.items() if k.endswith("lora_down.weight")}
    assert downs and all(float(v.abs().max()) == 0 for v in downs.values())  # ComfyUI: down = 0, the base model
    before = trainer.loss(data, env.cond, noise, sig)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 0.7
    assert torch.equal(_denoised(trainer.model, x, 0.7, env.cond), _denoised(env.model, x, 0.7, env.cond))
    fixed = lambda gen: (torch.arange(3), noise, sig, torch.ones(3, dtype=torch.float64))
    with torch.inference_mode():  # as ComfyUI's executor runs nodes: training must turn gradients on itself
        losses = trainer.train(data, env.cond, SCHED, steps=1, batch_fn=fixed)
    after = trainer.loss(data, env.cond, noise, sig)
    assert losses[0] == pytest.approx(before, rel=1e-5)
    assert after < before, (before, after)
    assert any(float(trainer.lora[k].abs().max()) > 0 for k in downs)
    # the base model is untouched by the LoRA clone
    assert not torch.equal(_denoised(trainer.model, x, 0.7, env.cond), _denoised(env.model, x, 0.7, env.cond))
    base_again = env.fin.LoraTrainer(env.model, env.settings())
    assert base_again.loss(data, env.cond, noise, sig) == pytest.approx(before, rel=1e-6)


def test_anchor_weighting_reaches_the_step_and_bad_names_are_refused(env, one_thread):
    with pytest.raises(env.fin.FinetuneError, match="anchor_weighting"):
        env.settings(anchor=0.5, anchor_weighting="v")
    data = env.latents["samples"]
    states = {}
    for weighting in ("x0", "eps"):
        trainer = env.fin.LoraTrainer(env.model, env.settings(batch_size=4, anchor=0.5, anchor_weighting=weighting))
        trainer.train(data, env.cond, SCHED, steps=1)
        states[weighting] = trainer.lora_state()
    # same seed, same draws: only the anchor rows' weights differ, so the updates must differ
    assert any(not torch.equal(states["x0"][k], states["eps"][k]) for k in states["x0"])
    again = env.fin.LoraTrainer(env.model, env.settings(batch_size=4, anchor=0.5, anchor_weighting="x0"))
    again.train(data, env.cond, SCHED, steps=1)
    assert all(torch.equal(states["x0"][k], v) for k, v in again.lora_state().items())


def test_model_anchor_rows_learn_the_untuned_models_own_output(env, one_thread):
    # 3 of 4 rows anchored, the same draws either way: towards the untuned model's own output the
    # anchor rows start at zero error, so the first loss is the schedule row's alone; towards the
    # data they add their denoising error
    data = env.latents["samples"]
    for target in ("data", "trajectory"):
        first = {}
        for anchor_target in ("model", "data"):
            trainer = env.fin.LoraTrainer(env.model, env.settings(batch_size=4, anchor=0.75, anchor_target=anchor_target,
                                                                  target=target, trajectories=2, teacher_steps=1))
            first[anchor_target] = trainer.train(data, env.cond, SCHED, steps=1)[0]
        assert 0 < first["model"] < 0.75 * first["data"], (target, first)
    with pytest.raises(env.fin.FinetuneError, match="anchor_target"):
        env.settings(anchor_target="teacher")
    with pytest.raises(env.fin.FinetuneError, match="anchor: 0.9 of a batch of 4 makes all 4 rows anchor rows"):
        env.settings(batch_size=4, anchor=0.9)


def test_lr_schedule_sets_each_steps_rate(env, one_thread):
    from importlib import import_module
    lr_factor = import_module(env.pack.__name__ + ".samplers.finetune_loss").lr_factor
    for schedule in ("constant", "cosine"):
        trainer = env.fin.LoraTrainer(env.model, env.settings(learning_rate=1e-3, lr_schedule=schedule))
        seen = []
        trainer.train(env.latents["samples"], env.cond, SCHED, steps=6,
                      progress=lambda i, n: seen.append(trainer._optimizer.param_groups[0]["lr"]))
        assert seen == pytest.approx([1e-3 * lr_factor(i, 6, schedule) for i in range(6)], rel=1e-12)
    assert seen[0] > seen[-1] > 0  # cosine: decayed, not yet 0 at the last step


def test_holdout_never_trains_on_held_latents_and_keeps_the_best_check(env, one_thread):
    from importlib import import_module
    split = import_module(env.pack.__name__ + ".samplers.finetune_loss").holdout_split
    data = torch.randn(12, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    pool, held = split(12, 0.25, 0)
    assert held.numel() == 3
    with_holdout = env.fin.LoraTrainer(env.model, env.settings(batch_size=3, holdout=0.25))
    losses = with_holdout.train(data, env.cond, SCHED, steps=5)
    # the same draws on the training share alone, without checks: the same per-step losses, so the
    # held-out latents never entered a step and the checks did not disturb the training
    alone = env.fin.LoraTrainer(env.model, env.settings(batch_size=3))
    assert alone.train(data[pool], env.cond, SCHED, steps=5) == losses
    steps = [k for k, _ in with_holdout.validation]
    assert steps == [0, 1, 2, 3, 4, 5]  # before the first step, then every step (5 < HOLDOUT_CHECKS)
    best_step, best_loss = min(with_holdout.validation, key=lambda c: c[1])
    assert with_holdout.best_step == best_step
    # the kept weights give the best check's held-out loss again (the same fixed draw)
    with_holdout.train(data, env.cond, SCHED, steps=0)
    assert with_holdout.validation[0][1] == pytest.approx(best_loss, rel=1e-6)
    # a learning rate that wrecks the model: no check beats the start, the start's weights come back
    wrecked = env.fin.LoraTrainer(env.model, env.settings(batch_size=3, holdout=0.25, learning_rate=0.5))
    wrecked.train(data, env.cond, SCHED, steps=3)
    assert wrecked.best_step == 0, wrecked.validation
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 0.7
    assert torch.equal(_denoised(wrecked.model, x, 0.7, env.cond), _denoised(env.model, x, 0.7, env.cond))


def _teacher_reference(env, seed, rows, fine):
    """The untuned model's sample from the trainer's teacher noise for `seed`, through ComfyUI's own
    dpmpp_2m on the fine grid, in the model's internal latent space."""
    import comfy.sample
    import comfy.samplers
    eps = torch.randn((rows, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    out = comfy.sample.sample_custom(env.model, eps, 1.0, comfy.samplers.sampler_object("dpmpp_2m"), fine.float(),
                                     env.cond, env.cond, torch.zeros_like(eps), disable_pbar=True, seed=0)
    return env.model.model.process_latent_in(out)


def test_trajectory_teacher_is_comfyui_dpmpp_2m_of_the_untuned_model_in_every_round(env, one_thread):
    from importlib import import_module
    teacher_sigmas = import_module(env.pack.__name__ + ".samplers.finetune_trajectory").teacher_sigmas
    trainer = env.fin.LoraTrainer(env.model, env.settings(target="trajectory", trajectories=3, teacher_steps=2,
                                                          batch_size=3, learning_rate=5e-3))
    fine, keep = teacher_sigmas(SCHED.double(), 2, float(env.model.get_model_object("model_sampling").sigma_min))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 3.0
    for done in (0, 1):  # the second call starts from a tuned LoRA: the teacher must still be the base
        with torch.inference_mode():
            trainer.train(env.latents["samples"], env.cond, SCHED, steps=1)
        ref = _teacher_reference(env, 0x7EAC + done, 3, fine)
        assert torch.allclose(trainer.teacher.targets[-1], ref, atol=1e-4), done  # the last target is the sample
        assert trainer.teacher.states.shape == (SCHED.numel() - 1, 3, 4, 8, 8)
    assert not torch.equal(_denoised(trainer.model, x, 3.0, env.cond), _denoised(env.model, x, 3.0, env.cond))


def test_trajectory_target_lowers_the_held_out_solves_loss(env, one_thread):
    trainer = env.fin.LoraTrainer(env.model, env.settings(target="trajectory", trajectories=8, teacher_steps=2,
                                                          batch_size=4, holdout=0.25, learning_rate=3e-3, anchor=0.25))
    trainer.train(env.latents["samples"], env.cond, SCHED, steps=6)
    start, best = trainer.validation[0][1], min(v for _, v in trainer.validation)
    assert best < 0.98 * start, trainer.validation
    assert trainer.best_step > 0
    # the training draw reaches only the solves outside the held-out share
    from importlib import import_module
    pool, held = import_module(env.pack.__name__ + ".samplers.finetune_loss").holdout_split(8, 0.25, 0)
    xs, _, _, _ = trainer.teacher.draw(64, pool, "explicit", torch.Generator().manual_seed(1))
    flat = trainer.teacher.states.flatten(2)
    match = (xs.flatten(1)[:, None, None] == flat[None]).all(-1)  # (row, step, solve)
    assert match.any(-1).any(-1).all() and not match[:, :, held].any()


def test_on_policy_rows_are_the_models_own_solves_and_reduce_to_the_teachers_when_it_is_the_teacher(env, one_thread):
    # teacher_steps 1: the teacher's solve is the untuned model's own few-step solve (and a last step
    # from sigma_min), so at the first refresh (untuned adapters) the student's states and targets
    # are the teacher's, computed the other way (student_targets on its own solve)
    settings = env.settings(target="trajectory", trajectories=3, teacher_steps=1, batch_size=3, on_policy=1.0)
    trainer = env.fin.LoraTrainer(env.model, settings)
    with torch.inference_mode():
        losses = trainer.train(env.latents["samples"], env.cond, SCHED, steps=1)
    teacher, student = trainer.teacher, trainer.student
    assert student.states.shape == teacher.states.shape and torch.equal(student.samples, teacher.samples)
    assert torch.allclose(student.states, teacher.states, atol=1e-4)
    assert torch.allclose(student.targets, teacher.targets, atol=1e-4)
    assert trainer.student_seconds > 0 and len(losses) == 1
    # with a teacher that is not the model's own solve (teacher_steps 3) and adapters moved by
    # earlier steps, the last refresh starts from the teacher's noises and follows the tuned model
    settings = env.settings(target="trajectory", trajectories=3, teacher_steps=3, batch_size=3, on_policy=0.5,
                            learning_rate=2e-2)
    trainer = env.fin.LoraTrainer(env.model, settings)
    with torch.inference_mode():
        trainer.train(env.latents["samples"], env.cond, SCHED, steps=16)  # refreshed every 2 steps
    teacher, student = trainer.teacher, trainer.student
    assert torch.equal(student.states[0], teacher.states[0])  # the same noises
    assert float((student.states[1:] - teacher.states[1:]).abs().max()) > 1e-3  # its own states, not the teacher's
    from importlib import import_module
    report = import_module(env.pack.__name__ + ".bridge.finetune_report").report
    assert "0.5 of the rows at the model's own states" in report(env.fin.FinetuneResult(trainer.model, {}, [], settings))
    with pytest.raises(env.fin.FinetuneError, match="on_policy"):
        env.settings(on_policy=0.5)  # the data target has no own states to train at
    with pytest.raises(env.fin.FinetuneError, match="on_policy"):
        env.settings(target="trajectory", on_policy=1.5)


def _sample(model, sigmas, cond, seed=4):
    import comfy.sample
    import comfy.samplers
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.sampler_object("dpmpp_2m"), sigmas.float(), cond,
                                      cond, torch.zeros_like(noise), disable_pbar=True, seed=seed)


def test_gated_model_applies_the_lora_only_on_its_schedule(env, one_thread):
    from importlib import import_module
    gate = import_module(env.pack.__name__ + ".bridge.finetune_gate")
    res = env.fin.finetune(env.model, env.latents, env.cond, SCHED, env.settings(steps=3, learning_rate=2e-2))
    gated = gate.gate_to_schedule(res.model, res.adapters, SCHED)
    other = torch.tensor([14.6146, 6.0, 3.0, 1.5, 0.7, 0.3, 0.0])  # shares levels with SCHED, not the schedule
    tuned_on, base_on = _sample(res.model, SCHED, env.cond), _sample(env.model, SCHED, env.cond)
    assert float((tuned_on - base_on).abs().max()) > 1e-4
    assert torch.equal(_sample(gated, SCHED, env.cond), tuned_on)  # its schedule: the LoRA acts on every call
    assert torch.equal(_sample(gated, other, env.cond), _sample(env.model, other, env.cond))  # elsewhere: untuned
    assert torch.equal(_sample(gated, SCHED[1:], env.cond), _sample(env.model, SCHED[1:], env.cond))
    assert not torch.equal(_sample(res.model, other, env.cond), _sample(env.model, other, env.cond))
    assert torch.equal(_sample(gated, SCHED, env.cond), tuned_on)  # and again after the other samplings
    assert gated.model_options[gate.GATE_OPTION] == [round(float(v), 6) for v in SCHED.tolist()]
    assert gate.GATE_OPTION not in res.model.model_options  # the ungated model is left as it was


def test_lora_round_trips_through_core_save_and_load_nodes(env, one_thread):
    import folder_paths
    M = env.nodes.NODE_CLASS_MAPPINGS
    res = env.fin.finetune(env.model, env.latents, env.cond, SCHED, env.settings(steps=3, learning_rate=2e-2))
    M["SaveLoRA"].execute(res.lora, "loras/fewstep_test")
    files = glob.glob(os.path.join(folder_paths.get_output_directory(), "loras", "fewstep_test*.safetensors"))
    assert len(files) == 1
    import comfy.utils
    loaded = comfy.utils.load_torch_file(files[0])
    assert set(loaded) == set(res.lora)
    out = M["LoraModelLoader"].execute(env.model, loaded, 1.0)
    reloaded = out.result[0] if hasattr(out, "result") else out[0]
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6)) * 3.0
    tuned = _denoised(res.model, x, 3.0, env.cond)
    base = _denoised(env.model, x, 3.0, env.cond)
    again = _denoised(reloaded, x, 3.0, env.cond)
    assert float((tuned - base).abs().max()) > 1e-4  # the LoRA does something ...
    assert torch.allclose(again, tuned, atol=1e-5, rtol=1e-4)  # ... and loads back as the same model


def _run_node(env, lists=(), **inputs):
    return run_node(env.nodes, lists, **inputs)


def _node_inputs(env, **kw):
    return node_inputs(**{**dict(model=env.model, latents=env.latents, positive=env.cond, sigmas=SCHED), **kw})


def test_node_runs_in_the_host_with_alternation(env, one_thread, tmp_path):
    import folder_paths
    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    try:
        model, lora, curve, report, last = _run_node(env, **_node_inputs(env, rounds=2, phase1_grid=8, phase1_mc_samples=2,
                                                                   lr_schedule="cosine", holdout=0.34))
    finally:
        folder_paths.set_user_directory(old)
    assert set(lora) and all(torch.is_tensor(v) for v in lora.values())
    assert curve.ndim == 4 and curve.shape[0] == 1 and curve.shape[-1] == 3
    assert "round 1: sigmas [14.61, 3, 0.7, 0]" in report and "round 2: sigmas" in report
    assert "Phase 1" in report
    assert "(cosine)" in report and "0.34 of the latents held out" in report
    assert report.count("held-out loss") == 2  # one line per round
    assert f"round 2: sigmas [{', '.join(f'{v:.4g}' for v in last.tolist())}]" in report  # the output is round 2's
    folder_paths.set_user_directory(str(tmp_path))
    try:
        *_, report, _ = _run_node(env, **_node_inputs(env, target="trajectory", trajectories=4, teacher_steps=2,
                                                   phase1_sampler="euler", rounds=2, phase1_grid=8, phase1_mc_samples=2))
    finally:
        folder_paths.set_user_directory(old)
    assert "target: trajectory for euler (4 solves of the untuned model, 2 teacher steps per step" in report
    assert report.count("of which teacher") == 2  # each round solves its own schedule
    gated, *_, report, gate_sigmas = _run_node(env, **_node_inputs(env, only_on_schedule=True))
    assert gate_sigmas.dtype == torch.float32 and torch.allclose(gate_sigmas.double(), SCHED.double())
    assert "applies the LoRA only when sampled on [14.61, 3, 0.7, 0]" in report
    assert torch.equal(_sample(gated, SCHED[1:], env.cond), _sample(env.model, SCHED[1:], env.cond))
    folder_paths.set_user_directory(str(tmp_path))
    try:  # alternated: the MODEL is gated to the last round's schedule, which the sigmas output gives
        gated, *_, last = _run_node(env, **_node_inputs(env, only_on_schedule=True, rounds=2, phase1_grid=8,
                                                         phase1_mc_samples=2))
    finally:
        folder_paths.set_user_directory(old)
    assert not torch.equal(_sample(gated, last, env.cond), _sample(env.model, last, env.cond))
    orange = (curve[0] - torch.tensor([235, 140, 20]) / 255).abs().max(-1).values < 0.02
    assert int(orange.sum()) > 20  # the held-out checks are drawn
    assert model.model_options[env.fin.LORA_DIGEST_KEY] == env.fin.lora_digest(lora)


def test_a_list_of_training_latents_is_one_training_set(env, one_thread):
    """A folder of images through VAE Encode reaches the node as a list of LATENTs (one per image):
    the node trains on them as one batch, the same LoRA as the batch itself gives."""
    x = env.latents["samples"]
    one_per_image = [{"samples": x[i:i + 1]} for i in range(x.shape[0])]
    _, batch_lora, _, batch_report, _ = _run_node(env, **_node_inputs(env))
    _, list_lora, _, list_report, _ = _run_node(env, lists=("latents", "positive"),
                                             **_node_inputs(env, latents=one_per_image, positive=[env.cond] * 6))
    assert set(list_lora) == set(batch_lora) and all(torch.equal(list_lora[k], batch_lora[k]) for k in batch_lora)
    untimed = lambda text: re.sub(r"[0-9.]+ s\b", "", text)
    assert untimed(list_report) == untimed(batch_report)
    cases = [  # (lists, inputs, what the error names)
        (("latents",), dict(latents=[{"samples": x[:3]}, {"samples": torch.zeros(3, 4, 8, 6)}]), "latents: the training latents differ"),
        (("latents",), dict(latents=[]), "latents: nothing"),
        (("positive",), dict(positive=[env.cond, [[torch.ones(1, 1, 768), {}]]]), "positive: one conditioning"),
        (("rank",), dict(rank=[4, 8]), "rank: expected one value"),
    ]
    for lists, over, match in cases:
        with pytest.raises(Exception, match=match):
            _run_node(env, lists=lists, **_node_inputs(env, **over))


def test_node_refuses_bad_input_before_any_model_call(env):
    import comfy.samplers
    calls = []
    wrapped = env.model.clone()
    wrapped.set_model_unet_function_wrapper(lambda apply, args: calls.append(1) or apply(args["input"], args["timestep"], **args["c"]))
    cases = [
        (dict(latents={"samples": torch.zeros(0, 4, 8, 8)}), "latents"),
        (dict(latents={}), "latents"),
        (dict(sigmas=torch.tensor([80.0, 10.0, 1.0, 0.0])), "another model"),  # an EDM schedule on an SD model
        (dict(sigmas=torch.tensor([1.0, 3.0, 0.0])), "sigmas"),
        (dict(positive=[]), "positive"),
        (dict(spread=2.0), "spread"),
        (dict(lr_schedule="linear"), "lr_schedule"),
        (dict(holdout=0.05), "holdout"),  # 6 latents: none would be held out
        (dict(target="trajectory", phase1_sampler="heun"), "phase1_sampler"),  # no linear target for heun
        (dict(target="trajectory", trajectories=4, holdout=0.1), "teacher solves"),
        (dict(target="score"), "target"),
    ]
    for over, match in cases:
        with pytest.raises(Exception, match=match):
            _run_node(env, **_node_inputs(env, model=wrapped, **over))
    fresh = tiny_unet(seed=1)  # its own model_sampling: nothing registered, nothing cached
    with pytest.raises(Exception, match="no optimised schedule"):
        _run_node(env, **_node_inputs(env, model=fresh, sigmas=None))
    lab = env.nodes.NODE_CLASS_MAPPINGS["FewStepLabModel"].execute("gmm", 4, 0.3, 0, "sd_discrete")[0]
    with pytest.raises(Exception, match="UNet"):
        _run_node(env, **_node_inputs(env, model=lab))
    assert calls == []


def test_schedule_from_the_optimiser_output_and_not_from_another_model(env, one_thread, tmp_path):
    import folder_paths
    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    try:
        model = tiny_unet(seed=2)
        opt = env.nodes.NODE_CLASS_MAPPINGS["FewStepOptimizeSchedule"]
        sig, optimised, _ = opt.execute(model, env.cond, env.cond, 1.0, 64, 64, 3, "euler", 2, 0,
                                         latent=env.latents, grid=8).result
        *_, report, _ = _run_node(env, **_node_inputs(env, model=optimised, sigmas=None))
        assert "schedule: optimiser record" in report and "optimised at CFG 1)" in report
        assert f"round 1: sigmas [{', '.join(f'{v:.4g}' for v in sig.tolist())}]" in report
        # a LoRA'd clone shares model_sampling with the optimised model: its schedule is refused
        other = env.fin.finetune(model, env.latents, env.cond, sig, env.settings()).model
        with pytest.raises(Exception, match="made for another model"):
            _run_node(env, **_node_inputs(env, model=other, sigmas=None))
    finally:
        folder_paths.set_user_directory(old)


def test_cancel_stops_training_between_steps(env):
    import comfy.model_management as mm
    seen = []

    def progress(i, n):
        seen.append(i)
        if i == 2:
            mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            env.fin.finetune(env.model, env.latents, env.cond, SCHED, env.settings(steps=50), progress=progress)
    finally:
        mm.interrupt_current_processing(False)
    assert seen == [1, 2]

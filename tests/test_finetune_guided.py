"""Phase 2's trajectory target at CFG > 1 inside the real ComfyUI (CPU), on a tiny UNet with
cross-attention (so the positive and negative prompts give different outputs): the teacher is
ComfyUI's own guided solve, training lowers the guided loss through both passes, the alternation's
Phase 1 optimises at the same CFG, and bad settings are named before any model call."""
import glob
import importlib
import json
import os

import pytest
import torch

from tests.support import random_unet
from tests.support.finetune_node import node_inputs, run_node

SCHED = torch.tensor([14.6146, 3.0, 0.7, 0.0])
CFG = 4.0


@pytest.fixture(scope="module")
def env(comfy):
    nodes, pack = comfy

    class Env:
        pass
    e = Env()
    e.nodes, e.pack = nodes, pack
    e.fin = importlib.import_module(pack.__name__ + ".bridge.finetune")
    e.teacher_sigmas = importlib.import_module(pack.__name__ + ".samplers.finetune_trajectory").teacher_sigmas
    e.model = random_unet.tiny_sd15(device=torch.device("cpu"), seed=0)
    e.model.model.latent_format.scale_factor = 1.0
    e.positive = random_unet.random_conditioning(random_unet.TINY_SD15_UNET, tokens=4, seed=1)
    e.negative = [[torch.zeros(1, 4, 16), {}]]
    e.latents = {"samples": torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(3))}
    e.settings = lambda **kw: e.fin.TrainSettings(**{**dict(
        steps=1, batch_size=3, learning_rate=5e-3, rank=4, training_dtype="fp32", lora_dtype="fp32",
        gradient_checkpointing=False, seed=0, target="trajectory", trajectories=3, teacher_steps=2, cfg=CFG), **kw})
    return e


def _guided_solve(env, model, sigmas, seed, rows, cfg=CFG, sampler="dpmpp_2m"):
    """ComfyUI's own sampler at `cfg` on `sigmas` from the trainer's teacher noise for `seed`, in the
    model's internal latent space."""
    import comfy.sample
    import comfy.samplers
    eps = torch.randn((rows, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    out = comfy.sample.sample_custom(model, eps, cfg, comfy.samplers.sampler_object(sampler), sigmas.float(),
                                     env.positive, env.negative, torch.zeros_like(eps), disable_pbar=True, seed=0)
    return model.model.process_latent_in(out)


def test_guided_teacher_is_comfyuis_cfg_solve_of_the_untuned_model(env, one_thread):
    fine, _ = env.teacher_sigmas(SCHED.double(), 2, float(env.model.get_model_object("model_sampling").sigma_min))
    trainer = env.fin.LoraTrainer(env.model, env.settings())
    with torch.inference_mode():
        trainer.train(env.latents["samples"], env.positive, SCHED, steps=1, negative=env.negative)
    guided = _guided_solve(env, env.model, fine, 0x7EAC, 3)
    assert torch.allclose(trainer.teacher.targets[-1], guided, atol=1e-4, rtol=1e-4)  # the last target is the guided sample
    conditional = _guided_solve(env, env.model, fine, 0x7EAC, 3, cfg=1.0)
    assert float((guided - conditional).abs().max()) > 1e-2  # the prompts differ: CFG is not a no-op here


def test_guided_training_lowers_the_held_out_guided_loss_and_moves_the_guided_few_step_solve(env, one_thread):
    settings = env.settings(trajectories=8, batch_size=4, holdout=0.25, learning_rate=3e-3, anchor=0.25,
                            anchor_target="model")
    trainer = env.fin.LoraTrainer(env.model, settings)
    trainer.train(env.latents["samples"], env.positive, SCHED, steps=6, negative=env.negative)
    start, best = trainer.validation[0][1], min(v for _, v in trainer.validation)
    assert best < 0.98 * start, trainer.validation
    assert not torch.equal(_guided_solve(env, trainer.model, SCHED, 5, 2), _guided_solve(env, env.model, SCHED, 5, 2))


def test_guided_settings_and_inputs_are_named_before_any_model_call(env):
    cases = [(dict(target="data"), "cfg: the data target"),
             (dict(anchor=0.25), "anchor_target"),  # the data anchor has no guided target
             (dict(cfg=101.0), "cfg must be"),
             (dict(cfg=float("nan")), "cfg must be")]
    for over, match in cases:
        with pytest.raises(env.fin.FinetuneError, match=match):
            env.settings(**over)
    env.settings(cfg=1.0, target="data", anchor=0.25)  # CFG 1 keeps every earlier setting
    calls = []
    wrapped = env.model.clone()
    wrapped.set_model_unet_function_wrapper(lambda apply, args: calls.append(1) or apply(args["input"], args["timestep"], **args["c"]))
    for negative in (None, []):
        with pytest.raises(env.fin.FinetuneError, match="negative: cfg 4"):
            env.fin.finetune(wrapped, env.latents, env.positive, SCHED, env.settings(), negative=negative)
        with pytest.raises(Exception, match="negative: cfg 4"):
            _run_node(env, **_node_inputs(env, model=wrapped, negative=negative))
    with pytest.raises(Exception, match="negative: one conditioning"):
        _run_node(env, lists=("negative",), **_node_inputs(env, model=wrapped, negative=[env.negative, env.positive]))
    assert calls == []


def _run_node(env, lists=(), **inputs):
    return run_node(env.nodes, lists, **inputs)


def _node_inputs(env, **kw):
    guided = dict(model=env.model, latents=env.latents, positive=env.positive, sigmas=SCHED, anchor=0.5,
                  target="trajectory", anchor_target="model", trajectories=4, teacher_steps=2, phase1_sampler="euler",
                  cfg=CFG, negative=env.negative)
    return node_inputs(**{**guided, **kw})


def test_node_trains_guided_and_its_alternation_optimises_at_the_same_cfg(env, one_thread, tmp_path):
    import folder_paths
    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    try:
        *_, report, last = _run_node(env, **_node_inputs(env, rounds=2, phase1_grid=8, phase1_mc_samples=2))
    finally:
        folder_paths.set_user_directory(old)
    assert "guided at CFG 4: sample the MODEL at that CFG with the same negative" in report
    records = [json.load(open(f)) for f in glob.glob(os.path.join(str(tmp_path), "**", "*.json"), recursive=True)]
    keys = [r["key"] for r in records if isinstance(r, dict) and "key" in r]
    assert keys and all(k["cfg"] == CFG and k["negative"] is not None for k in keys), keys  # Phase 1 at CFG 4
    assert f"round 2: sigmas [{', '.join(f'{v:.4g}' for v in last.tolist())}]" in report
    *_, report, _ = _run_node(env, **_node_inputs(env, cfg=1.0, negative=None))
    assert "conditional, CFG 1" in report  # no negative needed at CFG 1

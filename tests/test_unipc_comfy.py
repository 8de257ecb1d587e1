"""The paper's UniPC inside the real ComfyUI: SAMPLER node, dropdown entries, model-call counts."""
import math
import sys

import pytest
import torch

from tests.support.comfy_host import recording

# Published 1024² schedules (fscheduler.md §1.3), used here only as sigma lists to sample along.
SDXL_6 = [14.6146, 5.2124, 2.4311, 1.3238, 0.7560, 0.3937, 0.0600]
SDXL_8 = [14.6146, 6.5481, 3.4672, 2.0671, 1.3238, 0.8711, 0.5597, 0.3171, 0.0600]


def lab(nodes, dataset="shapes", components=8, spread=0.05):
    return nodes.NODE_CLASS_MAPPINGS["FewStepLabModel"].execute(dataset, components, spread, 0, "sd_discrete")[0]




def sample(nodes, model, sampler, sigmas, seed=3, shape=(2, 4, 8, 8), cfg=1.0):
    import comfy.sample
    cond = nodes.NODE_CLASS_MAPPINGS["FewStepLabConditioning"].execute()[0]
    latent = torch.zeros(shape)
    noise = comfy.sample.prepare_noise(latent, seed)
    out = comfy.sample.sample_custom(model, noise, cfg, sampler, torch.tensor(sigmas), cond, cond, latent, seed=seed)
    return out, noise


@pytest.mark.parametrize("sigmas", [SDXL_6, SDXL_8])
def test_afs_keeps_model_calls_at_n_and_uses_the_timestep_midpoint(comfy, sigmas):
    nodes, _ = comfy
    model = recording(lab(nodes))
    sampler = nodes.NODE_CLASS_MAPPINGS["FewStepSamplerUniPC"].execute("auto", True, True, True, 1.0)[0]
    out, _ = sample(nodes, model, sampler, sigmas)
    n = len(sigmas) - 1
    assert len(model.seen) == n, model.seen
    # t(14.6146) = 999, t(5.2124) = 804.3 -> t 901.6 -> sigma 8.419; 8 steps: t 925.7 -> sigma 9.578
    assert model.seen[0] == pytest.approx({6: 8.4193, 8: 9.5775}[n], abs=2e-3)
    assert model.seen[1:] == pytest.approx(sigmas[1:-1], abs=1e-4)
    assert torch.isfinite(out).all()


def test_comfy_path_is_the_pure_solver(comfy):
    """Through ComfyUI (noise scaling, model wrapper, eps parametrisation) = the maths on D directly."""
    nodes, pack = comfy
    unipc = sys.modules[pack.__name__ + ".samplers.unipc"]
    model = lab(nodes, "gmm", 6, 0.3)
    den = model.model.diffusion_model.denoiser
    sampler = nodes.NODE_CLASS_MAPPINGS["FewStepSamplerUniPC"].execute("2", True, True, True, 1.0)[0]
    out, noise = sample(nodes, model, sampler, SDXL_8)
    x0 = noise.double() * math.sqrt(1 + SDXL_8[0] ** 2)  # ComfyUI's max-denoise noise scaling
    mid = unipc.timestep_midpoint(SDXL_8[0], SDXL_8[1], model.get_model_object("model_sampling").sigmas.double())
    want = unipc.sample_unipc_fs(lambda x, s, **_: den(x, s), x0, torch.tensor(SDXL_8, dtype=torch.float64),
                                 order=2, afs=True, afs_sigma=mid)
    assert torch.allclose(out.double(), want, atol=2e-3, rtol=1e-3), (out.double() - want).abs().max()


@pytest.mark.parametrize("name, steps", [("fewstep_unipc_fs", 6), ("fewstep_unipc_fs_afs", 8)])
def test_dropdown_entries_run_in_core_ksampler(comfy, name, steps):
    nodes, _ = comfy
    import comfy.samplers
    assert name in comfy.samplers.KSampler.SAMPLERS
    model = recording(lab(nodes))
    cond = nodes.NODE_CLASS_MAPPINGS["FewStepLabConditioning"].execute()[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    out = nodes.common_ksampler(model, 1, steps, 1.0, name, "karras", cond, cond, latent)[0]["samples"]
    assert torch.isfinite(out).all()
    assert len(model.seen) == steps  # KSampler's trailing 0 is the free final data prediction


def test_flow_models_are_refused_clearly(comfy):
    nodes, _ = comfy
    import comfy.model_sampling as ms

    class Flow(ms.ModelSamplingDiscreteFlow, ms.CONST):
        pass
    model = lab(nodes).clone()
    flow = Flow(model.model.model_config)
    flow.set_parameters(shift=3.0, multiplier=1000)
    model.add_object_patch("model_sampling", flow)  # what ComfyUI's ModelSamplingSD3 node does
    sampler = nodes.NODE_CLASS_MAPPINGS["FewStepSamplerUniPC"].execute("auto", True, True, False, 1.0)[0]
    with pytest.raises(ValueError, match="flow"):
        sample(nodes, model, sampler, [1.0, 0.5, 0.1])

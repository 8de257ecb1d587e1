"""The lab model inside the real ComfyUI: built by its node, sampled by ComfyUI's own KSampler."""
import torch


def test_lab_model_runs_through_core_ksampler(comfy):
    nodes, pack = comfy
    model = nodes.NODE_CLASS_MAPPINGS["FewStepLabModel"].execute("shapes", 8, 0.05, 0, "sd_discrete")[0]
    cond = nodes.NODE_CLASS_MAPPINGS["FewStepLabConditioning"].execute()[0]
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    out = nodes.common_ksampler(model, 7, 40, 1.0, "heun", "karras", cond, cond, latent)[0]["samples"]
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    # 40 Heun steps end close to a data point: the nearest mixture mean is within a few spreads.
    means = model.model.diffusion_model.denoiser.means((4, 8, 8), "cpu", torch.float32)
    dist = torch.cdist(out.flatten(1), means.flatten(1)).min(1).values
    assert (dist < 0.05 * 8 * 3).all(), dist


def test_lab_model_output_is_the_exact_denoiser(comfy):
    """ComfyUI's model wrapper (input scaling, eps parametrisation, denoised) returns D(x; sigma)."""
    nodes, pack = comfy
    import comfy.samplers
    for schedule in ("sd_discrete", "edm"):
        model = nodes.NODE_CLASS_MAPPINGS["FewStepLabModel"].execute("gmm", 6, 0.2, 1, schedule)[0]
        den = model.model.diffusion_model.denoiser
        x = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
        sigma = torch.tensor([5.0, 0.9, 0.05])
        got = model.model.apply_model(x, sigma, transformer_options={})
        want = den(x.double(), sigma.double()).float()
        assert torch.allclose(got, want, atol=2e-4, rtol=1e-4), (schedule, (got - want).abs().max())
        ms = model.get_model_object("model_sampling")
        if schedule == "edm":
            assert abs(float(ms.sigma_max) - 80) < 1e-3 and abs(float(ms.sigma_min) - 0.002) < 1e-6
        else:
            assert abs(float(ms.sigma_max) - 14.6146) < 1e-3 and abs(float(ms.sigma_min) - 0.0292) < 1e-3

"""Samplers, schedules and nodes inside the real ComfyUI (in-process), on the exact-denoiser lab model."""
import importlib
import types

import pytest
import torch

FS_SAMPLERS = ["fewstep_dpmpp_1s", "fewstep_dpmpp_2s", "fewstep_dpmpp_2m", "fewstep_dpmpp_3m",
               "fewstep_deis_tab2", "fewstep_deis_tab3", "fewstep_deis_rhoab2", "fewstep_deis_rhoab3",
               "fewstep_deis_rhork3", "fewstep_deis_rhork4", "fewstep_edm_heun", "fewstep_edm_stochastic",
               "fewstep_edm_midpoint", "fewstep_dpmpp_3s"]
FS_SCHEDULERS = ["fewstep_timestep_power", "fewstep_fscheduler_512", "fewstep_fscheduler_1024"]


@pytest.fixture(scope="module")
def env(comfy):
    nodes, pack = comfy
    mods = types.SimpleNamespace(**{name: importlib.import_module(f"{pack.__name__}.{path}") for name, path in [
        ("dpmpp", "samplers.dpmpp"), ("deis", "samplers.deis"), ("edm", "samplers.edm"),
        ("schedules", "samplers.schedules"), ("exact", "samplers.exact"), ("dropdowns", "bridge.dropdowns")]})
    M = nodes.NODE_CLASS_MAPPINGS
    sd = M["FewStepLabModel"].execute("gmm", 6, 0.3, 0, "sd_discrete")[0]
    cond = M["FewStepLabConditioning"].execute()[0]
    return types.SimpleNamespace(nodes=nodes, M=M, m=mods, sd=sd, cond=cond)


def _calls(model):
    return model.model.diffusion_model.calls


def _latent(batch=2, value=0.0):
    return {"samples": torch.full((batch, 4, 8, 8), value)}


def _core_adv(env, model, sampler_name, scheduler, steps=8, latent=None, add_noise="enable", seed=3, start=0,
              end=10000, leftover="disable", cfg=1.0):
    latent = _latent() if latent is None else latent
    return env.nodes.KSamplerAdvanced().sample(model, add_noise, seed, steps, cfg, sampler_name, scheduler, env.cond,
                                               env.cond, latent, start, end, leftover)[0]["samples"]


def _ours_adv(env, model, sampler_name, scheduler, steps=8, latent=None, add_noise="enable", seed=3, start=0,
              end=10000, leftover="disable", cfg=1.0, **overrides):
    latent = _latent() if latent is None else latent
    return env.M["FewStepKSamplerAdvanced"].execute(model, add_noise, seed, steps, cfg, sampler_name, scheduler,
                                                     env.cond, env.cond, latent, start, end, leftover,
                                                     **overrides)[0]["samples"]


# ---------------------------------------------------------------- registration

def test_dropdown_entries_are_registered_in_place(env):
    import comfy.k_diffusion.sampling as ks
    import comfy.samplers
    assert comfy.samplers.KSampler.SAMPLERS is comfy.samplers.SAMPLER_NAMES
    assert comfy.samplers.KSampler.SCHEDULERS is comfy.samplers.SCHEDULER_NAMES
    assert list(env.m.dropdowns.DROPDOWN_SAMPLERS) == FS_SAMPLERS
    assert list(env.m.dropdowns.DROPDOWN_SCHEDULERS) == FS_SCHEDULERS
    before = (list(comfy.samplers.SAMPLER_NAMES), list(comfy.samplers.SCHEDULER_NAMES))
    env.m.dropdowns.register()  # idempotent on re-import
    assert (list(comfy.samplers.SAMPLER_NAMES), list(comfy.samplers.SCHEDULER_NAMES)) == before
    for name in FS_SAMPLERS:
        assert comfy.samplers.SAMPLER_NAMES.count(name) == 1 and name in comfy.samplers.KSAMPLER_NAMES
        assert callable(getattr(ks, f"sample_{name}"))
    for name in FS_SCHEDULERS:
        assert comfy.samplers.SCHEDULER_NAMES.count(name) == 1 and name in comfy.samplers.SCHEDULER_HANDLERS
    for node in ("KSampler", "KSamplerAdvanced"):
        req = env.nodes.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"]
        assert set(FS_SAMPLERS) <= set(req["sampler_name"][0]) and set(FS_SCHEDULERS) <= set(req["scheduler"][0])


def test_pure_schedule_helpers_agree_with_comfy_model_sampling(env):
    ms = env.sd.get_model_object("model_sampling")
    sch = env.m.schedules
    table = sch.sd_discrete_sigmas()
    assert torch.equal(table, ms.sigmas.cpu())
    t = torch.tensor([0.0, 3.3, 120.5, 640.25, 998.5, 999.0])
    assert torch.allclose(sch.table_sigma(t, ms.sigmas).float(), ms.sigma(t), rtol=2e-6)
    sig = torch.tensor([0.05, 0.3, 1.7, 9.0])
    assert torch.equal(sch.table_timestep(sig, ms.sigmas).round().long(), ms.timestep(sig).long())


def test_schedule_nodes_match_dropdowns_presets_and_core_karras(env):
    import comfy.samplers
    ms = env.sd.get_model_object("model_sampling")
    fs_node = env.M["FewStepFSchedulerSigmas"]
    for preset in ("512x5", "512x6", "512x8", "1024x5", "1024x6", "1024x8"):
        res, steps = (int(v) for v in preset.split("x"))
        from_dropdown = comfy.samplers.calculate_sigmas(ms, f"fewstep_fscheduler_{res}", steps)
        from_node = fs_node.execute(env.sd, preset, 1, 1.0, 1.0, 2, 1, -1.0, "auto")[0]
        assert torch.equal(from_dropdown, from_node), preset
        assert from_node.numel() == steps + 1 and from_node[-1] > 0
    core = comfy.samplers.calculate_sigmas(ms, "karras", 9)
    ours = env.M["FewStepKarrasSigmas"].execute(9, 0.0, 0.0, 7.0, True, 1.0, env.sd)[0]
    assert torch.allclose(core, ours, rtol=2e-6, atol=0)


# ---------------------------------------------------------------- identities with ComfyUI's own samplers

class Wrapped:
    """A bare denoiser dressed as ComfyUI's model wrapper (some core samplers look at model_sampling)."""

    def __init__(self, den):
        import comfy.model_sampling
        ms = type("MS", (comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS), {})()
        self.den = den
        self.inner_model = types.SimpleNamespace(inner_model=types.SimpleNamespace(model_sampling=ms),
                                                 model_patcher=types.SimpleNamespace(get_model_object=lambda n: ms))

    def __call__(self, x, sigma, **kw):
        return self.den(x, sigma)


def _identity_cases(env):
    import comfy.k_diffusion.sampling as ks
    m = env.m
    return {
        "dpmpp_2m == comfy dpmpp_2m": (lambda *a: m.dpmpp.sample_dpmpp_2m(*a), lambda *a: ks.sample_dpmpp_2m(*a)),
        "dpmpp_1s == comfy euler": (lambda *a: m.dpmpp.sample_dpmpp_1s(*a), lambda *a: ks.sample_euler(*a)),
        "deis_tab(1) == comfy euler": (lambda *a: m.deis.sample_deis_tab(*a, order=1), lambda *a: ks.sample_euler(*a)),
        "dpmpp_2s(r=1/2) == comfy dpmpp_2s_ancestral(eta=0)": (
            lambda *a: m.dpmpp.sample_dpmpp_2s(*a), lambda *a: ks.sample_dpmpp_2s_ancestral(*a, eta=0.0)),
        "rhork(heun) == comfy heun": (lambda *a: m.deis.sample_deis_rhork(*a, method="heun"),
                                      lambda *a: ks.sample_heun(*a)),
        "edm_heun == comfy heun": (lambda *a: m.edm.sample_edm_heun(*a), lambda *a: ks.sample_heun(*a)),
        "rhoab(2) == comfy lms(order=2)": (lambda *a: m.deis.sample_deis_rhoab(*a, order=2),
                                           lambda *a: ks.sample_lms(*a, order=2)),
        "rhoab(3) == comfy lms(order=3)": (lambda *a: m.deis.sample_deis_rhoab(*a, order=3),
                                           lambda *a: ks.sample_lms(*a, order=3)),
    }


@pytest.mark.parametrize("ending", ["zero", "sigma_stop"])
def test_identities_with_comfy_samplers_to_float32_rounding(env, ending):
    den = env.m.exact.ExactDenoiser(env.m.exact.MixtureSpec("gmm", components=6, spread=0.3, seed=0))
    model = Wrapped(den)
    table = env.m.schedules.sd_discrete_sigmas()
    sigmas = env.m.schedules.karras_sigmas(8, 0.0292, 14.6146) if ending == "zero" else \
        env.m.schedules.fscheduler_sigmas(8, table, p2=7.0, grid_points=12, stop_index=9)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    for label, (ours, theirs) in _identity_cases(env).items():
        a = ours(model, x, sigmas, {"seed": 1}, None, True)
        b = theirs(model, x, sigmas, {"seed": 1}, None, True)
        diff = (a - b).abs().max().item()
        print(f"\n[{ending}] {label}: max abs diff {diff:.3e} (|x| max {b.abs().max().item():.2f})")
        assert diff < 2e-5 * max(1.0, b.abs().max().item()), (label, diff)


def test_dropdown_dpmpp_2m_equals_core_dpmpp_2m_in_ksampler(env):
    for core, ours in [("dpmpp_2m", "fewstep_dpmpp_2m"), ("euler", "fewstep_dpmpp_1s"), ("heun", "fewstep_edm_heun")]:
        a = env.nodes.common_ksampler(env.sd, 5, 8, 1.0, core, "karras", env.cond, env.cond, _latent())[0]["samples"]
        b = env.nodes.common_ksampler(env.sd, 5, 8, 1.0, ours, "karras", env.cond, env.cond, _latent())[0]["samples"]
        diff = (a - b).abs().max().item()
        print(f"\nKSampler {core} vs {ours}: max abs diff {diff:.3e}")
        assert diff < 1e-5, (core, diff)


# ---------------------------------------------------------------- KSamplerAdvanced drop-in

ADV_CASES = [
    dict(sampler_name="euler", scheduler="karras"),
    dict(sampler_name="dpmpp_2m", scheduler="normal", start=2, end=6, leftover="enable"),
    dict(sampler_name="heun", scheduler="simple", end=5),
    dict(sampler_name="euler_ancestral", scheduler="karras", seed=9),
    dict(sampler_name="dpm_2", scheduler="karras", start=1),
    dict(sampler_name="uni_pc", scheduler="sgm_uniform", end=4, leftover="enable"),
    dict(sampler_name="dpmpp_2m", scheduler="karras", add_noise="disable", latent=dict(value=0.7)),
    dict(sampler_name="fewstep_dpmpp_3m", scheduler="fewstep_fscheduler_512"),
    dict(sampler_name="fewstep_edm_stochastic", scheduler="fewstep_timestep_power", end=6),
    dict(sampler_name="fewstep_deis_tab3", scheduler="fewstep_fscheduler_1024", start=3),
    dict(sampler_name="euler", scheduler="karras", start=9),
]


@pytest.mark.parametrize("case", ADV_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_ksampler_advanced_node_equals_core(env, case):
    case = dict(case)
    latent = case.pop("latent", None)
    latent = _latent(**latent) if latent else None
    a = _core_adv(env, env.sd, latent=latent, **case)
    b = _ours_adv(env, env.sd, latent=latent, **case)
    assert torch.equal(a, b), (a - b).abs().max()


def test_ksampler_advanced_with_batch_index_and_inpaint_mask_equals_core(env):
    latent = {"samples": torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4)),
              "batch_index": [4, 1, 7]}
    mask = torch.zeros(3, 1, 8, 8)
    mask[:, :, :, 4:] = 1.0
    latent["noise_mask"] = mask
    for sampler, scheduler in [("euler", "karras"), ("fewstep_dpmpp_2m", "fewstep_fscheduler_512")]:
        a = _core_adv(env, env.sd, sampler, scheduler, latent=latent)
        b = _ours_adv(env, env.sd, sampler, scheduler, latent=latent)
        assert torch.equal(a, b)
    # the kept region (mask 0) is the input latent where the schedule ends at 0
    out = _ours_adv(env, env.sd, "fewstep_dpmpp_2m", "karras", latent=latent)
    assert torch.allclose(out[..., :4], latent["samples"][..., :4], atol=1e-6)
    assert not torch.allclose(out[..., 4:], latent["samples"][..., 4:], atol=1e-2)


def test_sampler_and_sigmas_overrides_match_the_dropdowns(env):
    M = env.M
    sampler = M["FewStepSamplerDPMPP"].execute("2m")[0]
    a = _ours_adv(env, env.sd, "fewstep_dpmpp_2m", "fewstep_fscheduler_512")
    b = _ours_adv(env, env.sd, "euler", "fewstep_fscheduler_512", sampler=sampler)
    assert torch.equal(a, b)
    sigmas = M["FewStepFSchedulerSigmas"].execute(env.sd, "512x8", 3, 1.0, 1.0, 2, 1, -1.0, "auto")[0]
    c = _ours_adv(env, env.sd, "fewstep_dpmpp_2m", "karras", steps=99, sigmas=sigmas)
    assert torch.equal(a, c)
    # the override reaches the sampler: a different SAMPLER changes the result
    d = _ours_adv(env, env.sd, "euler", "karras", sampler=M["FewStepSamplerDEIS"].execute("rhork", 3, "rk4")[0],
                  sigmas=sigmas)
    assert not torch.allclose(a, d, atol=1e-4)


@pytest.mark.parametrize("sampler, scheduler, overrides", [
    ("euler", "karras", None),
    ("fewstep_dpmpp_1s", "fewstep_fscheduler_512", None),
    ("fewstep_edm_heun", "fewstep_timestep_power", None),
    ("fewstep_deis_rhork4", "karras", None),
    ("euler", "karras", "fscheduler+dpmpp_1s"),
])
def test_split_at_end_at_step_equals_one_run(env, sampler, scheduler, overrides):
    """Two chained nodes (leftover noise at end_at_step, then add_noise disabled from there) give the
    one-node result. Single-step solvers only: a multistep method restarts its history at the cut."""
    extra = {}
    if overrides:
        extra = dict(sigmas=env.M["FewStepFSchedulerSigmas"].execute(env.sd, "512x6", 1, 1, 1, 2, 1, -1.0, "auto")[0],
                     sampler=env.M["FewStepSamplerDPMPP"].execute("1s")[0])
    full = _ours_adv(env, env.sd, sampler, scheduler, **extra)
    first = _ours_adv(env, env.sd, sampler, scheduler, end=3, leftover="enable", **extra)
    second = _ours_adv(env, env.sd, sampler, scheduler, latent={"samples": first}, add_noise="disable", start=3,
                       **extra)
    diff = (full - second).abs().max().item()
    print(f"\nsplit {sampler}/{scheduler}/{overrides}: max abs diff {diff:.3e}")
    assert diff < 1e-5
    assert not torch.allclose(first, full, atol=1e-2)  # the first half really stopped early


def test_denoise_below_one_uses_comfy_convention(env):
    import comfy.samplers
    ks = comfy.samplers.KSampler(env.sd, steps=6, device="cpu", sampler="fewstep_dpmpp_2m",
                                 scheduler="fewstep_timestep_power", denoise=0.5)
    node = env.M["FewStepTimestepPowerSigmas"].execute(env.sd, 6, 1.2, -1.0, -1.0, True, "log_sigma", 0.5)[0]
    assert torch.equal(ks.sigmas.cpu(), node)
    src = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.3}
    half = env.nodes.KSampler().sample(env.sd, 1, 6, 1.0, "fewstep_dpmpp_2m", "fewstep_timestep_power", env.cond,
                                       env.cond, src, denoise=0.5)[0]["samples"]
    full = env.nodes.KSampler().sample(env.sd, 1, 6, 1.0, "fewstep_dpmpp_2m", "fewstep_timestep_power", env.cond,
                                       env.cond, src, denoise=1.0)[0]["samples"]
    assert (half - src["samples"]).norm() < (full - src["samples"]).norm()


@pytest.mark.parametrize("sampler", ["fewstep_edm_stochastic", "fewstep_dpmpp_3m", "fewstep_deis_tab3"])
def test_batch_members_do_not_depend_on_batch_size(env, sampler):
    big = env.nodes.common_ksampler(env.sd, 21, 8, 1.0, sampler, "fewstep_fscheduler_512", env.cond, env.cond,
                                    _latent(3))[0]["samples"]
    small = env.nodes.common_ksampler(env.sd, 21, 8, 1.0, sampler, "fewstep_fscheduler_512", env.cond, env.cond,
                                      _latent(1))[0]["samples"]
    assert torch.allclose(big[:1], small, atol=1e-6, rtol=1e-6)
    again = env.nodes.common_ksampler(env.sd, 21, 8, 1.0, sampler, "fewstep_fscheduler_512", env.cond, env.cond,
                                      _latent(3))[0]["samples"]
    assert torch.equal(big, again)


def test_previews_get_every_step(env):
    import comfy.sample
    import comfy.samplers
    seen = []
    sampler = env.M["FewStepSamplerEDM"].execute(1.0, 0.0, 0.0, 1000.0, 1.0)[0]
    sigmas = env.M["FewStepKarrasSigmas"].execute(5, 0.0, 0.0, 7.0, True, 1.0, env.sd)[0]
    comfy.sample.sample_custom(env.sd, torch.randn(1, 4, 8, 8), 1.0, sampler, sigmas, env.cond, env.cond,
                               torch.zeros(1, 4, 8, 8), callback=lambda i, x0, x, n: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(5)]


# ---------------------------------------------------------------- other model types

def test_flow_model_lab_is_exact_and_samples_with_fewstep(env):
    flow = env.nodes.NODE_CLASS_MAPPINGS["ModelSamplingSD3"]().patch(env.sd, 3.0)[0]
    ms = flow.get_model_object("model_sampling")
    den = env.sd.model.diffusion_model.denoiser
    x0 = den.means((4, 8, 8), "cpu")[:2].float()
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for s in (0.9, 0.4, 0.05):
        sig = torch.full((2,), s)
        xt = (1 - s) * x0 + s * noise
        flow.patch_model()  # the object patch applies while the model is loaded for sampling
        try:
            got = flow.model.apply_model(xt, sig, transformer_options={})
        finally:
            flow.unpatch_model()
        want = den(xt.double() / (1 - s), torch.full((2,), s / (1 - s), dtype=torch.float64)).float()
        assert torch.allclose(got, want, atol=1e-4)
    # on a flow model our solvers are ComfyUI's (flow ODE dx/dsigma = (x - D)/sigma, same as VE)
    for core, ours in [("euler", "fewstep_dpmpp_1s"), ("heun", "fewstep_edm_heun"), ("dpmpp_2m", "fewstep_dpmpp_2m")]:
        a = env.nodes.common_ksampler(flow, 2, 8, 1.0, core, "simple", env.cond, env.cond, _latent())[0]["samples"]
        b = env.nodes.common_ksampler(flow, 2, 8, 1.0, ours, "simple", env.cond, env.cond, _latent())[0]["samples"]
        assert (a - b).abs().max().item() < 1e-5, (core, (a - b).abs().max().item())
    # and they land on the data: an exact sample is ~ spread * sqrt(256) = 4.8 from its mean
    means = den.means((4, 8, 8), "cpu", torch.float32)
    for sampler, scheduler, steps in [("fewstep_dpmpp_3m", "simple", 20), ("fewstep_deis_rhoab3", "simple", 20),
                                      ("fewstep_dpmpp_2m", "fewstep_timestep_power", 30),
                                      ("fewstep_deis_tab2", "fewstep_fscheduler_512", 30)]:
        out = env.nodes.common_ksampler(flow, 2, steps, 1.0, sampler, scheduler, env.cond, env.cond,
                                        _latent())[0]["samples"]
        dist = torch.cdist(out.flatten(1), means.flatten(1)).min(1).values
        print(f"\nflow {sampler}/{scheduler}: distance to nearest data mean {dist.tolist()}")
        assert torch.isfinite(out).all() and (dist > 0.7 * 4.8).all() and (dist < 1.3 * 4.8).all()
    fs = env.m.dropdowns.DROPDOWN_SCHEDULERS["fewstep_fscheduler_512"](ms, 6)
    assert fs.numel() == 7 and fs[0].item() == pytest.approx(1.0) and 0 < fs[-1].item() < 0.2


def test_edm_model_refuses_timestep_schedules_before_any_model_call(env):
    edm_model = env.M["FewStepLabModel"].execute("gmm", 6, 0.3, 0, "edm")[0]
    for scheduler in FS_SCHEDULERS:
        before = _calls(edm_model)
        with pytest.raises(ValueError, match=r"^model: .*EDM"):
            env.nodes.common_ksampler(edm_model, 1, 6, 1.0, "euler", scheduler, env.cond, env.cond, _latent())
        assert _calls(edm_model) == before
    with pytest.raises(ValueError, match=r"^model: .*Karras"):
        env.M["FewStepFSchedulerSigmas"].execute(edm_model, "512x6", 6, 1.2, 5.0, 8, 6, -1.0, "auto")
    with pytest.raises(ValueError, match=r"^model:"):
        env.M["FewStepTimestepPowerSigmas"].execute(edm_model, 6, 1.2, -1.0, -1.0, True, "log_sigma")
    karras = env.M["FewStepKarrasSigmas"].execute(6, 0.0, 0.0, 7.0, True, 1.0, edm_model)[0]
    assert karras[0].item() == pytest.approx(80.0) and karras[-2].item() == pytest.approx(0.002)
    out = _ours_adv(env, edm_model, "fewstep_dpmpp_3m", "karras", sigmas=karras)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- bad input through the nodes

def test_bad_node_input_is_a_clear_error_before_any_model_call(env):
    M = env.M
    cases = [
        (lambda: M["FewStepKarrasSigmas"].execute(0, 0.1, 10.0, 7.0), "steps"),
        (lambda: M["FewStepKarrasSigmas"].execute(6, 1.0, 10.0, 7.0), "sigma_min"),  # (steps, max, min, rho)
        (lambda: M["FewStepKarrasSigmas"].execute(6, 10.0, 0.1, 0.0), "rho"),
        (lambda: M["FewStepKarrasSigmas"].execute(6, 0.0, 0.1, 7.0), "sigma_min"),
        (lambda: M["FewStepFSchedulerSigmas"].execute(env.sd, "custom", 6, 1.2, 5.0, 8, 8, -1.0, "auto"), "stop_index"),
        (lambda: M["FewStepTimestepPowerSigmas"].execute(env.sd, 6, 1.2, 100.0, 500.0, True, "log_sigma"), "t_min"),
        (lambda: M["FewStepSamplerDEIS"].execute("tab", 4), "order"),
        (lambda: M["FewStepSamplerDEIS"].execute("rhork", 3, "rk5"), "rk_method"),
        (lambda: M["FewStepSamplerDPMPP"].execute("2s", 0.0), "r"),
        (lambda: M["FewStepSamplerEDM"].execute(0.0), "alpha"),
        (lambda: M["FewStepSamplerEDM"].execute(1.0, 1.0, 5.0, 1.0), "s_tmax"),
        (lambda: _ours_adv(env, env.sd, "euler", "karras", sigmas=torch.tensor([5.0, float("nan"), 0.0])), "sigmas"),
        (lambda: _ours_adv(env, env.sd, "euler", "karras", sigmas=torch.tensor([1.0, 5.0, 0.0])), "sigmas"),
        (lambda: _ours_adv(env, env.sd, "euler", "karras", steps=0), "steps"),
        (lambda: _ours_adv(env, env.sd, "euler", "karras", sigmas=torch.tensor([5.0, 1.0, 0.0]),
                           sampler=M["FewStepSamplerDPMPP"].execute("3m")[0]), "sigmas"),
    ]
    for call, param in cases:
        before = _calls(env.sd)
        with pytest.raises(ValueError, match=rf"^{param}\b") as err:
            call()
        print(f"\n{param}: {err.value}")
        assert _calls(env.sd) == before, param

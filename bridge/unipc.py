"""The F-scheduler paper's UniPC as ComfyUI sees it: the solver wrapped with the AFS point taken
from the model's own timestep table, its two dropdown entries and the SAMPLER factory."""
# The maths module is imported at call time: the pack's import must stay cheap.
ORDERS = (1, 2, 3)  # samplers.unipc.ORDERS


def model_sampling_of(model):
    """The model_sampling object behind the k-diffusion model ComfyUI hands a sampler function
    (KSamplerX0Inpaint -> guider -> ModelPatcher), or None when called outside ComfyUI."""
    guider = getattr(model, "inner_model", None)
    patcher = getattr(guider, "model_patcher", None)
    if patcher is not None:
        return patcher.get_model_object("model_sampling")
    base = getattr(guider, "inner_model", None)
    return getattr(base, "model_sampling", None)


def afs_point(model_sampling, sigma0: float, sigma1: float):
    """The paper's AFS point from the model's own training-timestep table, or None for models without
    one (continuous EDM-style: the solver then takes the midpoint in log sigma, which is their own
    timestep midpoint)."""
    from ..samplers.unipc import timestep_midpoint
    from .model_time import VP, time_table
    try:
        table, kind = time_table(model_sampling, "the analytic first step")
    except ValueError:
        return None
    mid = timestep_midpoint(sigma0, sigma1, table, "alphas_cumprod" if kind == VP else "log_sigma")
    return mid if sigma1 < mid < sigma0 else None


def sample_fewstep_unipc(model, x, sigmas, extra_args=None, callback=None, disable=None, afs=False,
                         afs_sigma=None, **options):
    """sample_unipc_fs with the AFS point taken from the model's timestep table (paper's rule)."""
    import comfy.model_sampling

    from ..samplers.unipc import sample_unipc_fs
    ms = model_sampling_of(model)
    if isinstance(ms, comfy.model_sampling.CONST):
        raise ValueError("FewStep UniPC works in noise-prediction form for models with x = x0 + sigma*eps "
                         "(SD1.5, SDXL, EDM); this model is a flow-matching (CONST) model: use another sampler")
    if afs and afs_sigma is None and ms is not None and len(sigmas) > 1 and float(sigmas[1]) > 0:
        afs_sigma = afs_point(ms, float(sigmas[0]), float(sigmas[1]))
    return sample_unipc_fs(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                           afs=afs, afs_sigma=afs_sigma, **options)


def sample_fewstep_unipc_fs(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """Dropdown entry: paper UniPC, order 1 up to 6 calls else 2, corrector, no AFS."""
    options.setdefault("order", "auto")
    return sample_fewstep_unipc(model, x, sigmas, extra_args, callback, disable, **options)


def sample_fewstep_unipc_fs_afs(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """Dropdown entry: as fewstep_unipc_fs plus the analytic first step (the paper's 1024² setting)."""
    options.setdefault("order", "auto")
    options.setdefault("afs", True)
    return sample_fewstep_unipc(model, x, sigmas, extra_args, callback, disable, **options)


def unipc_sampler(order="auto", corrector=True, lower_order_final=True, afs=False, afs_eps_scale=1.0):
    """A ComfyUI SAMPLER running the paper's UniPC with these options."""
    import comfy.samplers
    order = order if order == "auto" else int(order)
    if order != "auto" and order not in ORDERS:
        raise ValueError(f"order must be 'auto' or one of {ORDERS}, got {order!r}")
    return comfy.samplers.KSAMPLER(sample_fewstep_unipc, extra_options={
        "order": order, "corrector": bool(corrector), "lower_order_final": bool(lower_order_final),
        "afs": bool(afs), "afs_eps_scale": float(afs_eps_scale)})

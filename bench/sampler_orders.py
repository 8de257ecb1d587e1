"""Observed convergence order of every FewStep solver, as a markdown table.

    python -m bench.sampler_orders            # Gaussian problem (exact solution) + mixture check
    python -m bench.sampler_orders --comfy    # also ComfyUI's own samplers ($COMFYUI_PATH)

Order = least-squares slope of -log(max error) against log(steps) over Karras grids
(rho 7, sigma 14.6146 -> 0.0292, no trailing 0) of 16..256 moves (mixture: 16..128)."""
import argparse

import torch

from samplers.analytic import ORDER_STEPS, gaussian_order, mixture_order
from samplers.catalog import SOLVERS


def _comfy_solvers():
    """A few ComfyUI samplers for comparison (their ODE forms), wrapped like its model wrapper."""
    from bench.gpu_env import setup_comfy
    setup_comfy(cpu=True)
    import types
    import comfy.k_diffusion.sampling as ks
    import comfy.model_sampling
    ms = type("MS", (comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS), {})()

    def wrap(fn, **opts):
        def run(den, x, sigmas, disable=True):
            model = lambda x_, s_, **kw: den(x_, s_)
            model.inner_model = types.SimpleNamespace(inner_model=types.SimpleNamespace(model_sampling=ms),
                                                      model_patcher=types.SimpleNamespace(get_model_object=lambda n: ms))
            return fn(model, x, sigmas, disable=disable, **opts)
        return run

    zeros = lambda s, t: 0.0
    return {
        "comfy euler": (wrap(ks.sample_euler), 1),
        "comfy heun": (wrap(ks.sample_heun), 2),
        "comfy dpmpp_2m": (wrap(ks.sample_dpmpp_2m), 2),
        "comfy dpmpp_3m_sde (eta=0)": (wrap(ks.sample_dpmpp_3m_sde, eta=0.0, noise_sampler=zeros), 3),
        "comfy lms (order 3)": (wrap(ks.sample_lms, order=3), 3),
        "comfy deis (tab, max_order 3)": (wrap(ks.sample_deis, max_order=3), 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfy", action="store_true", help="also measure ComfyUI's own samplers")
    parser.add_argument("--no-mixture", action="store_true", help="skip the (slower) mixture column")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [(name, spec, spec.order) for name, spec in SOLVERS.items() if spec.order is not None]
    if args.comfy:
        rows += [(name, fn, order) for name, (fn, order) in _comfy_solvers().items()]
    print(f"| solver | nominal order | observed, Gaussian (N={ORDER_STEPS[0]}..{ORDER_STEPS[-1]}) | "
          f"max error N={ORDER_STEPS[0]} / N={ORDER_STEPS[-1]} | observed, mixture (N=16..128) |")
    print("|---|---|---|---|---|")
    for name, fn, order in rows:
        got, errors = gaussian_order(fn)
        mix = "-" if args.no_mixture else f"{mixture_order(fn)[0]:.2f}"
        print(f"| {name} | {order} | {got:.2f} | {errors[0]:.2e} / {errors[-1]:.2e} | {mix} |", flush=True)


if __name__ == "__main__":
    main()

"""How precise are the Phase 2 study's FD and FD_inf at its sample counts? (CPU, minutes)

The study (bench/study_finetune_gmm.py) scores model samples, whose true distance to the mixture is
unknown. Here the samples come from a mixture whose distance is known exactly: the study's family
with its spread scaled and its components weighted unevenly (a distribution that is neither the
target nor Gaussian, as a model's samples are), so FD between its own Gaussian fit and the target's
is exact (bench/frechet.py, frechet_of_moments). For each family, sample count and seed: FD and
FD_inf against that exact value: median and spread (min-max) over seeds.

Paired rows: a second mixture (spread x --paired-scale, the same weights) drawn with the SAME
component choices and the same Gaussian draws, as two samplers started from the same noises mostly
are; the spread of the ratio FD_inf(second) / FD_inf(first) against the exact ratio shows how much
of the noise a paired comparison (the study's: every method on the same noises) cancels.

  python -m bench.check_frechet_spread [--seeds 8] [--counts 16384 32768] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.frechet import GaussianTarget, frechet, frechet_infinite, frechet_of_moments, mixture_moments
from bench.study_finetune_gmm import FAMILIES
from samplers.exact import MixtureSpec, mixture_means

SHAPE = (4, 8, 8)  # the study's latent
VALIDATION = ["gmm8-s0.1", "gmm16-s0.5", "shapes8-s0.1"]  # the study's validation families


def perturbed(name: str, spread_scale: float, weight_tilt: float, paired_scale: float = 1.0):
    """(target, draw(count, gen) -> (samples, paired samples), exact FD, exact paired FD): the family's
    mixture target; samples of the same means with spread × spread_scale and weights ∝
    exp(weight_tilt · k / K); the paired samples the same draws with spread × spread_scale × paired_scale."""
    dataset, k, spread, seed = FAMILIES[name]
    mu = mixture_means(MixtureSpec(dataset, k, spread, seed), SHAPE).flatten(1).double()
    target = GaussianTarget.of(*mixture_moments(mu, torch.full((k,), 1.0 / k, dtype=torch.float64), spread))
    w = torch.exp(weight_tilt * torch.arange(k, dtype=torch.float64) / k)
    w = w / w.sum()
    s, s2 = spread * spread_scale, spread * spread_scale * paired_scale
    exact = frechet_of_moments(*mixture_moments(mu, w, s), target)
    exact_paired = frechet_of_moments(*mixture_moments(mu, w, s2), target)

    def draw(count, gen):
        which = torch.multinomial(w, count, replacement=True, generator=gen)
        z = torch.randn((count, mu.shape[1]), generator=gen, dtype=torch.float64)
        return mu[which] + s * z, mu[which] + s2 * z
    return target, draw, exact, exact_paired


def spread_of(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=VALIDATION, choices=list(FAMILIES))
    p.add_argument("--counts", nargs="+", type=int, default=[16384, 32768])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--spread-scale", type=float, default=1.06)
    p.add_argument("--weight-tilt", type=float, default=0.2)
    p.add_argument("--paired-scale", type=float, default=0.98,
                   help="the paired mixture's spread relative to the first's")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    out = {"args": vars(a), "rows": []}
    for name in a.families:
        target, draw, exact, exact_paired = perturbed(name, a.spread_scale, a.weight_tilt, a.paired_scale)
        for n in a.counts:
            t0 = time.perf_counter()
            fd, inf, ratio = [], [], []
            for seed in range(a.seeds):
                x, y = draw(n, torch.Generator().manual_seed(seed))
                fd.append(frechet(x, target))
                inf.append(frechet_infinite(x, target, seed=seed))
                ratio.append(frechet_infinite(y, target, seed=seed) / inf[-1])
            row = {"family": name, "samples": n, "exact": exact, "fd": spread_of(fd), "fd_inf": spread_of(inf),
                   "fd_inf_values": inf, "exact_ratio": exact_paired / exact, "paired_ratio": spread_of(ratio),
                   "seconds": time.perf_counter() - t0}
            out["rows"].append(row)
            print(f"{name} n={n}: exact {exact:.4f}; FD median {row['fd']['median']:.4f} "
                  f"[{row['fd']['min']:.4f}, {row['fd']['max']:.4f}]; FD_inf median {row['fd_inf']['median']:.4f} "
                  f"[{row['fd_inf']['min']:.4f}, {row['fd_inf']['max']:.4f}]; paired FD_inf ratio, exact "
                  f"{row['exact_ratio']:.3f}: median {row['paired_ratio']['median']:.3f} "
                  f"[{row['paired_ratio']['min']:.3f}, {row['paired_ratio']['max']:.3f}] ({row['seconds']:.0f} s)", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

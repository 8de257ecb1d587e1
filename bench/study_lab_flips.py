"""Where the lab's mean error comes from at few model calls: samples that end on another mode.

    python -m bench.study_lab_flips                    # NFE 5 and 6, both data sets, noise seed 0
    python -m bench.study_lab_flips --seed 5 --nfe 5

Runs bench/bench_lab_accuracy.py's benchmark (same samplers, schedules, fitted schedules and
noises; nothing written) and splits every top combination's per-sample error into samples that end
near the exact sample and samples that end far from it (error above --far, on another mode of the
data: the modes of the lab sets are far apart, so the two groups do not overlap), then shows how
much of each mean the far samples make and which far samples the best ComfyUI and FewStep
combinations share. Prints markdown.
"""
from __future__ import annotations

import argparse

from bench import bench_lab_accuracy as bench


def split(errs, far):
    """(far samples, mean share of the far samples, mean share of the rest) of one run."""
    n = len(errs)
    mask = errs > far
    return int(mask.sum()), float(errs[mask].sum()) / n, float(errs[~mask].sum()) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 6])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--far", type=float, default=0.1, help="per-sample RMSE above which a sample counts as far")
    ap.add_argument("--top", type=int, default=4, help="combinations per origin shown per cell")
    args, rest = ap.parse_known_args(argv)
    rows = bench.main(["--nfe", *map(str, args.nfe), "--seed", str(args.seed), "--no-write", *rest])
    import torch
    print(f"\nNoise seed {args.seed}; far = per-sample RMSE > {args.far}; mean = near part + far part.\n")
    for ds in sorted({r["dataset"] for r in rows}):
        for n in args.nfe:
            cell = [r for r in rows if r["dataset"] == ds and r["nfe"] == n and not r["same_as"]
                    and torch.isfinite(r["errs"]).all()]
            if not cell:
                continue
            print(f"### {ds}, NFE {n}\n")
            print("| origin | sampler + schedule | mean | far samples | far part | near part | median |")
            print("|---|---|---:|---:|---:|---:|---:|")
            best = {}
            for origin in ("ComfyUI", "FewStep"):
                ranked = sorted((r for r in cell if r["origin"] == origin), key=lambda r: r["rmse_mean"])
                if ranked:
                    best[origin] = ranked[0]
                for r in ranked[: args.top]:
                    k, fp, npart = split(r["errs"], args.far)
                    print(f"| {origin} | {r['sampler']} + {r['schedule']} | {r['rmse_mean']:.4g} | {k} | {fp:.4g} | "
                          f"{npart:.4g} | {r['rmse_median']:.3g} |")
            if len(best) == 2:
                fc, ff = (best[o]["errs"] > args.far for o in ("ComfyUI", "FewStep"))
                every = torch.stack([r["errs"] > args.far for r in cell]).all(0)
                c, f = best["ComfyUI"], best["FewStep"]
                print(f"\nBest of each: FewStep / ComfyUI = {f['rmse_mean'] / c['rmse_mean']:.2f}; far samples "
                      f"{int(fc.sum())} (ComfyUI) and {int(ff.sum())} (FewStep), {int((fc & ff).sum())} shared; "
                      f"far for every one of the {len(cell)} combinations: {int(every.sum())}. Near parts alone: "
                      f"FewStep / ComfyUI = {split(f['errs'], args.far)[2] / max(split(c['errs'], args.far)[2], 1e-30):.2f}.\n")


if __name__ == "__main__":
    main()

"""The Phase 2 ground-truth study (bench/study_finetune_gmm.py) with one process per family, all at
once on one GPU: the small UNet's steps are launch-bound, so several processes fill the GPU's idle gaps.
Every family runs every --sweep candidate (--no-pick); the merge then picks on the first family alone
(the development family, as the one-process run does) and reports that candidate on the others, which
stay validation families. Tables of every candidate on every family come beside it. With --fixed (a
candidate picked in an earlier run) every family validates it, alternation included, and nothing is picked.

  python -m bench.study_finetune_parallel --out DIR --families gmm8-s0.3 gmm8-s0.1 -- [study options]
  python -m bench.study_finetune_parallel --merge DIR        # merge again (e.g. after a cut run)
  python -m bench.study_finetune_gmm --table DIR/study_finetune_gmm.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.finetune_diagnostics import summary
from bench.study_finetune_gmm import FAMILIES, adopt, parse_candidate, pick

REPO = Path(__file__).resolve().parents[1]
RESULT = "study_finetune_gmm.json"
ORDER = "families.json"


def run(out: Path, families, study_args, timeout_s=None, threads=None) -> list:
    """Starts one study process per family (CPU threads shared out between them unless `threads` says
    how many each gets: several runs at once); returns their exit codes."""
    threads = threads or max(1, (os.cpu_count() or 1) // len(families))
    out.mkdir(parents=True, exist_ok=True)
    (out / ORDER).write_text(json.dumps(list(families)))  # the first picks, also for a later --merge
    procs = []
    for name in families:
        part = out / name
        part.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "bench.study_finetune_gmm", "--families", name, "--out", str(part),
               *([] if "--fixed" in study_args else ["--no-pick"]), *study_args]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        log = open(part / "log.txt", "w")
        procs.append((name, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    codes = []
    t0 = time.perf_counter()
    for name, proc, log in procs:
        try:
            codes.append(proc.wait(timeout=None if timeout_s is None else max(1.0, timeout_s - (time.perf_counter() - t0))))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
        log.close()
        said = [line for line in (out / name / "log.txt").read_text().splitlines(True) if line.startswith("[")]
        print(f"{name}: exit {codes[-1]}; its last log lines:\n" + "".join(said[-3:]), flush=True)
    return codes


def merge(out: Path, families=None) -> dict:
    """One results file from the families' parts: the first family's rows pick the candidate."""
    if families is None:
        if not (out / ORDER).is_file():
            raise SystemExit(f"{out / ORDER} is missing: the family order (the first picks) is not known")
        families = json.loads((out / ORDER).read_text())
    parts = [out / name for name in families if (out / name / RESULT).is_file()]
    if not parts or parts[0].name != families[0]:
        raise SystemExit(f"no {RESULT} for the development family {families[0]} under {out}: nothing can be picked")
    loaded = [json.loads((d / RESULT).read_text()) for d in parts]
    order = [d.name for d in parts]
    merged = {"args": dict(loaded[0]["args"], families=order, out=str(out)), "device": loaded[0]["device"],
              "families": {}, "parallel": len(parts)}
    for r in loaded:
        merged["families"].update(r["families"])
    merged["families"] = {name: merged["families"][name] for name in order}
    if merged["args"].get("fixed"):
        merged["chosen"] = loaded[0]["chosen"]
    else:
        dev = merged["families"][order[0]]
        dev["sweep_ratios"], dev["chosen"] = pick(dev, merged["args"]["sweep"], merged["args"]["choose_steps"])
        merged["chosen"] = {"label": dev["chosen"], **parse_candidate(dev["chosen"])}
        for fam in merged["families"].values():
            adopt(fam, dev["chosen"])
    (out / RESULT).write_text(json.dumps(merged, indent=1))
    return merged


def folds(ratios) -> str:
    """'; folds a-b': the paired ratio on disjoint quarters of the samples (bench/frechet.py fold_ratios)."""
    return f"; folds {min(ratios):.2f}-{max(ratios):.2f}" if ratios else ""


def table(path: str) -> str:
    """Markdown tables from a results JSON: FD per method and N (ratio to P1), then the 30+-step check."""
    res = json.loads(Path(path).read_text())
    lines = []
    for name, fam in res["families"].items():
        role = "settings picked here" if "chosen" in fam else "validation"
        steps = f"{fam['pretrain_steps']} steps in " if "pretrain_steps" in fam else ""
        lines.append(f"**{name}** ({role}; UNet {fam.get('params', 0) / 1e6:.2f} M, pretrain {steps}{fam.get('pretrain_s', 0):.0f} s"
                     + (f", replicate {fam['replicate']}" if fam.get("replicate") else "")
                     + (f", method seed {fam['method_seed']}" if fam.get("method_seed") else "")
                     + f"; FD floor of exact samples {fam['floor']['fd']:.4f}"
                     + (f", extrapolated {fam['floor']['fd_inf']:.4f}" if "fd_inf" in fam["floor"] else "") + ")\n")
        if fam.get("pretrain_curve"):
            lines.append(f"FD at {res['args']['ref_steps']} Karras steps during pretraining (step: FD): "
                         + ", ".join(f"{i}: {c['fd']:.4f}" for i, c in fam["pretrain_curve"]) + "\n")
        methods = ["base+karras", "P1", "P1+uniform", "P1+2"] + sorted({k for r in fam["rows"].values() for k in r
                                                                       if k.startswith("alt") and k[3:].isdigit()})
        lines.append("| N | " + " | ".join(methods) + " | P1+2 / P1 | FD_inf P1 → P1+2 (ratio) | alt / P1 | near (P1 → P1+2) "
                     "| coverage (P1 → P1+2) |")
        lines.append("|---" * (len(methods) + 6) + "|")
        for n, row in fam["rows"].items():
            cells = [f"{row[m]['fd']:.4f}" if m in row else "–" for m in methods]
            p1 = row["P1"]["fd"]
            r12 = f"{row['P1+2']['fd'] / p1:.3f}" if "P1+2" in row else "–"
            inf = (f"{row['P1']['fd_inf']:.4f} → {row['P1+2']['fd_inf']:.4f} ({row['P1+2']['fd_inf'] / row['P1']['fd_inf']:.3f}"
                   + folds(row.get("P1+2_folds")) + ")" if "fd_inf" in row.get("P1+2", {}) else "–")
            alt = [m for m in methods if m.startswith("alt") and m in row]
            ralt = f"{row[alt[0]]['fd'] / p1:.3f}" if alt else "–"
            if alt and "fd_inf" in row[alt[0]]:
                ralt += f" (FD_inf {row[alt[0]]['fd_inf'] / row['P1']['fd_inf']:.3f}" + folds(row.get(alt[0] + "_folds")) + ")"
            near = f"{row['P1']['near']:.3f} → {row['P1+2']['near']:.3f}" if "P1+2" in row else "–"
            cov = f"{row['P1']['coverage']:.2f} → {row['P1+2']['coverage']:.2f}" if "P1+2" in row else "–"
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {r12} | {inf} | {ralt} | {near} | {cov} |")
        diags = [(n, row["P1+2_diag"]) for n, row in fam["rows"].items() if "P1+2_diag" in row]
        if diags:
            lines.append(f"\nP1+2 against its teacher ({diags[0][1]['count']} fresh teacher solves; "
                         "bench/finetune_diagnostics.py): " + "; ".join(f"N={n}: {summary(d)}" for n, d in diags))
        base = fam["base_ref"]["fd"]
        if "fd_inf" in fam["base_ref"]:
            lines.append(f"\nUntuned model at {res['args']['ref_steps']} Karras steps, FD_inf {fam['base_ref']['fd_inf']:.4f}; "
                         + ", ".join(f"P1+2 (N={n}) {row['P1+2_ref']['fd_inf']:.4f}" for n, row in fam["rows"].items()
                                     if "fd_inf" in row.get("P1+2_ref", {})))
        refs = {f"P1+2 (N={n})": row["P1+2_ref"]["fd"] for n, row in fam["rows"].items() if "P1+2_ref" in row}
        refs.update({f"P1+2 gated to its schedule (N={n})": row["P1+2_ref_gated"]["fd"] for n, row in fam["rows"].items()
                     if "P1+2_ref_gated" in row})
        refs.update({f"alt (N={n})": row[k]["fd"] for n, row in fam["rows"].items() for k in row
                     if k.startswith("alt") and k.endswith("_ref")})
        if "uniform_ref" in fam:
            refs["uniform LoRA"] = fam["uniform_ref"]["fd"]
        if "uniform_eps_ref" in fam:
            refs["uniform eps-weighted LoRA"] = fam["uniform_eps_ref"]["fd"]
        lines.append(f"\n{res['args']['ref_steps']} Karras steps, FD relative to the untuned model ({base:.4f}): "
                     + ", ".join(f"{k} {v / base:.3f}" for k, v in refs.items()) + "\n")
        labels = [c for c in res["args"].get("sweep", []) if any(f"P1+2[{c}]" in r for r in fam["rows"].values())]
        if labels:
            picked = res.get("chosen", {}).get("label")
            lines.append("Every candidate, FD ratio to P1 (N …) and at " f"{res['args']['ref_steps']} steps to the untuned model:\n")
            lines.append("| candidate | " + " | ".join(f"N={n}" for n in fam["rows"]) + " | ref steps |")
            lines.append("|---" * (len(fam["rows"]) + 2) + "|")
            for c in labels:
                cells = [f"{row[f'P1+2[{c}]']['fd'] / row['P1']['fd']:.3f}" if f"P1+2[{c}]" in row else "–"
                         for row in fam["rows"].values()]
                refc = [row[f"P1+2[{c}]_ref"]["fd"] / base for row in fam["rows"].values() if f"P1+2[{c}]_ref" in row]
                span = f"{min(refc):.3f}–{max(refc):.3f}" if refc else "–"
                lines.append(f"| {c}{' (picked)' if c == picked else ''} | " + " | ".join(cells) + f" | {span} |")
            lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="results folder: one sub-folder per family, the merged file at the top")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES),
                   help="the first is the development family (the candidate is picked there)")
    p.add_argument("--timeout-s", type=float, default=None, help="stop the family processes after this many seconds")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per family process (default: shared out)")
    p.add_argument("--merge", default=None, metavar="DIR", help="only merge the parts already in DIR")
    p.add_argument("study_args", nargs=argparse.REMAINDER, help="-- then options of bench.study_finetune_gmm")
    args = p.parse_args()
    if args.merge:
        out = Path(args.merge)
    else:
        if not args.out:
            p.error("--out is required (or --merge DIR)")
        out = Path(args.out)
        study_args = args.study_args[1:] if args.study_args[:1] == ["--"] else args.study_args
        for flag in ("--families", "--out", "--sdxl-cost", "--sdxl-only", "--table", "--no-pick"):
            if flag in study_args:
                p.error(f"study option {flag} is set by this command (one family per process, one results file)")
        run(out, args.families, study_args, args.timeout_s, args.threads)
    merge(out, None if args.merge else args.families)
    print(table(str(out / RESULT)))


if __name__ == "__main__":
    main()

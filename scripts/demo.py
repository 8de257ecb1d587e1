"""Main job: boot a headless ComfyUI with the pack, post API workflows on the exact-denoiser lab
model over HTTP, and write to the output folder:

  lab_grid.png           samples of a few samplers x model calls (NFE), next to the exact ODE sample
  lab_error_vs_nfe.png   their measured error (RMSE vs the exact sample) against NFE
  lab_accuracy_plot.png  the accuracy node's own plot for one run
  fewstep_lab_*.png      the plain KSampler example (example_workflows/api/lab_ksampler_api.json)

Workflows posted: example_workflows/api/lab_accuracy_api.json (one per sampler x NFE, fields filled in)
and example_workflows/api/lab_ksampler_api.json. Rows: euler, dpmpp_2m and uni_pc on karras, plus the
best ComfyUI and FewStep dropdown combinations at NFE 5-8 from docs/lab_accuracy.csv (written by
bench/bench_lab_accuracy.py) when it exists, else up to three FewStep samplers. The accuracy node
builds sigmas the BasicScheduler way (no KSampler penultimate-sigma drop for uni_pc / dpm_2), so
those rows can differ slightly from the benchmark's.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from samplers.plotting import Series, image_grid, line_plot  # Pillow only, no ComfyUI
from tests.support.comfy_server import REPO, ComfyServer

WORKFLOWS = REPO / "example_workflows" / "api"  # API-format twins (headless use)
CORE_ROWS = [("euler", "karras"), ("dpmpp_2m", "karras"), ("uni_pc", "karras")]


def combo_options(spec):
    """Dropdown choices from /object_info: V1 nodes send [[choices], {...}], V3 nodes ["COMBO", {"options": [...]}]."""
    if isinstance(spec[0], list):
        return spec[0]
    return spec[1].get("options", []) if len(spec) > 1 else []


def progress(done, total, t0, note=""):
    width = 24
    filled = int(width * done / max(total, 1))
    bar = "#" * filled + "-" * (width - filled)
    line = f"[demo] [{bar}] {done}/{total} workflows  {time.time() - t0:5.1f} s {note}"
    if sys.stdout.isatty():
        print("\r" + line.ljust(100), end="" if done < total else "\n", flush=True)
    else:
        print(line, flush=True)


def best_from_benchmark(samplers, schedulers, nfes=(5, 6, 8)):
    """The best ComfyUI and FewStep dropdown combinations on `shapes` from the benchmark's CSV, if any."""
    path = REPO / "docs" / "lab_accuracy.csv"
    if not path.exists():
        return []
    errs = {}
    with open(path) as fh:
        for r in csv.DictReader(fh):
            if r["dataset"] == "shapes" and int(r["nfe"]) in nfes and r["sampler"] in samplers \
                    and r["schedule"] in schedulers and math.isfinite(float(r["rmse_mean"])) \
                    and not r.get("same_as"):
                errs.setdefault((r["origin"], r["sampler"], r["schedule"]), {})[int(r["nfe"])] = float(r["rmse_mean"])
    rows = []
    for origin in ("ComfyUI", "FewStep"):
        full = [(k, v) for k, v in errs.items() if k[0] == origin and len(v) == len(nfes)]
        if full:
            (_, sampler, sched), _ = min(full, key=lambda kv: sum(math.log(e) for e in kv[1].values()))
            rows.append((sampler, sched, origin))
    return rows


PACK_PREFERRED = ("fewstep_dpmpp_3m", "fewstep_deis_tab3", "fewstep_dpmpp_2m")


def choose_rows(samplers, schedulers, quick):
    """(sampler, schedule, why) rows of the grid."""
    if quick:
        return [(s, sch, "common") for s, sch in CORE_ROWS[:2]]
    rows = [(s, sch, "common") for s, sch in CORE_ROWS]
    for s, sch, origin in best_from_benchmark(samplers, schedulers):
        if all((s, sch) != r[:2] for r in rows):
            rows.append((s, sch, f"best {origin} at NFE 5-8 in BENCHMARKS.md"))
    pack = [s for s in PACK_PREFERRED if s in samplers] + [s for s in samplers if s.startswith("fewstep_")]
    for s in pack:
        if len(rows) >= 5:
            break
        if all(r[0] != s for r in rows):
            rows.append((s, "karras", "FewStep sampler"))
    return rows


def wait_all(server, pending: dict, t0):
    """pending: prompt_id -> key. Polls /history; returns {key: history entry or error text}."""
    results, total = {}, len(pending)
    progress(0, total, t0)
    while pending:
        time.sleep(0.25)
        for pid in list(pending):
            hist = server.get(f"/history/{pid}")
            if pid not in hist or hist[pid].get("status", {}).get("completed") is None:
                continue
            entry = hist[pid]
            key = pending.pop(pid)
            if entry["status"].get("status_str") == "error":
                msgs = [m[1].get("exception_message", "") for m in entry["status"].get("messages", [])
                        if m[0] == "execution_error"]
                results[key] = "error: " + (msgs[0].strip() if msgs else "unknown")
            else:
                results[key] = entry
            progress(total - len(pending), total, t0, note=f"({key[0]} @ {key[1]})" if isinstance(key, tuple) else "")
    return results


def load_images(server, entry, node_id, n=None):
    from PIL import Image
    ims = entry["outputs"].get(node_id, {}).get("images", [])[:n]
    return [Image.open(server.base / "output" / im.get("subfolder", "") / im["filename"]).convert("RGB") for im in ims]


def mosaic(images, cols=2):
    from PIL import Image
    if not images:
        return None
    w, h = images[0].size
    rows = math.ceil(len(images) / cols)
    out = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        out.paste(im, ((i % cols) * w, (i // cols) * h))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "out"), help="folder for images and plots (default ./out)")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 6, 8, 10], help="model calls per sample (columns)")
    ap.add_argument("--quick", action="store_true", help="two samplers, NFE 5 and 8 (for tests)")
    args = ap.parse_args(argv)
    nfes = [5, 8] if args.quick else sorted(set(args.nfe))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The lab's matrices are tiny: extra torch threads only spin, worst when the cores are shared.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    written = []
    with tempfile.TemporaryDirectory(prefix="fewstep-demo-") as tmp:
        server = ComfyServer(Path(tmp))
        print(f"[demo] starting headless ComfyUI with FewStep on {server.url} ...", flush=True)
        try:
            server.start()
            print(f"[demo] server up after {time.time() - t0:.1f} s", flush=True)
            info = server.get("/object_info/FewStepLabAccuracy")["FewStepLabAccuracy"]
            schedulers = combo_options(info["input"]["required"]["scheduler"])
            samplers = combo_options(
                server.get("/object_info/KSamplerSelect")["KSamplerSelect"]["input"]["required"]["sampler_name"])
            rows = choose_rows(samplers, schedulers, args.quick)
            template = json.loads((WORKFLOWS / "lab_accuracy_api.json").read_text())
            pending = {}
            for sampler, sched, why in rows:
                print(f"[demo] row: {sampler} + {sched} ({why})", flush=True)
                for n in nfes:
                    p = copy.deepcopy(template)
                    p["2"]["inputs"]["sampler_name"] = sampler
                    acc = p["3"]["inputs"]
                    acc.update(scheduler=sched, steps=n, count="model calls")
                    tag = f"demo_{sampler}_{sched}_{n}"
                    for node, kind in (("4", "plot"), ("6", "samples"), ("8", "exact")):
                        p[node]["inputs"]["filename_prefix"] = f"{tag}_{kind}"
                    status, body = server.post("/prompt", {"prompt": p, "client_id": "fewstep-demo"})
                    if status != 200:
                        raise RuntimeError(f"/prompt refused the accuracy workflow: {json.dumps(body)[:1500]}")
                    pending[body["prompt_id"]] = (f"{sampler} + {sched}", n)
            status, body = server.post("/prompt", {"prompt": json.loads((WORKFLOWS / "lab_ksampler_api.json").read_text()),
                                                   "client_id": "fewstep-demo"})
            if status != 200:
                raise RuntimeError(f"/prompt refused the KSampler workflow: {json.dumps(body)[:1500]}")
            pending[body["prompt_id"]] = "ksampler example"
            print(f"[demo] queued {len(pending)} API workflows: {len(rows)} samplers x NFE {nfes} "
                  f"(example_workflows/api/lab_accuracy_api.json) + example_workflows/api/lab_ksampler_api.json", flush=True)
            results = wait_all(server, pending, t0)

            # Grid: rows = sampler + schedule, columns = NFE, last column = the exact ODE sample.
            row_labels = [f"{s} + {sch}" for s, sch, _ in rows]
            cells, captions, errors, exact = [], [], {}, None
            for label in row_labels:
                row, caps = [], []
                for n in nfes:
                    res = results.get((label, n))
                    if isinstance(res, dict):
                        acc = res["outputs"]["3"]["fewstep_accuracy"][0]
                        errors[(label, n)] = acc["rmse_mean_target"]
                        row.append(mosaic(load_images(server, res, "6", 4)))
                        caps.append(f"RMSE {acc['rmse_mean_target']:.3g}")
                        if exact is None:
                            exact = mosaic(load_images(server, res, "8", 4))
                    else:
                        row.append(None)
                        caps.append("n/a" if res is None else "cannot make this NFE" if "model calls" in res else "failed")
                        if isinstance(res, str):
                            print(f"[demo] {label} @ NFE {n}: {res[:200]}")
                cells.append(row)
                captions.append(caps)
            for row, caps in zip(cells, captions):
                row.append(exact)
                caps.append("")
            grid = image_grid(cells, row_labels, [f"NFE {n}" for n in nfes] + ["exact ODE sample"], captions=captions,
                              title="FewStep lab (shapes): first 4 of 8 samples per run; RMSE vs the exact sample")
            grid.save(out / "lab_grid.png")
            written.append(out / "lab_grid.png")

            series = []
            for label in row_labels:
                pts = [(n, errors[(label, n)]) for n in nfes if (label, n) in errors]
                if pts:
                    series.append(Series(label, [n for n, _ in pts], [e for _, e in pts],
                                         dash=label.startswith("fewstep_"), marker="s" if "fewstep_" in label else "o"))
            line_plot(series, title="lab shapes: error vs model calls (same noise, exact ODE as truth)",
                      xlabel="NFE (model calls)", ylabel="RMSE vs exact sample", xlog=True, ylog=True,
                      xticks=nfes, size=(820, 460)).save(out / "lab_error_vs_nfe.png")
            written.append(out / "lab_error_vs_nfe.png")

            done = [k for k, v in results.items() if isinstance(k, tuple) and isinstance(v, dict)]
            key = ("dpmpp_2m + karras", 8) if ("dpmpp_2m + karras", 8) in done else (done[0] if done else None)
            if key:
                load_images(server, results[key], "4", 1)[0].save(out / "lab_accuracy_plot.png")
                written.append(out / "lab_accuracy_plot.png")
            ks = results.get("ksampler example")
            if isinstance(ks, dict):
                for im in ks["outputs"]["6"]["images"]:
                    src = server.base / "output" / im.get("subfolder", "") / im["filename"]
                    (out / im["filename"]).write_bytes(src.read_bytes())
                    written.append(out / im["filename"])
            else:
                raise RuntimeError(f"the KSampler example failed: {ks}")
            if not errors:
                raise RuntimeError("no accuracy workflow succeeded; see the messages above")
        finally:
            server.stop()

    print("[demo] RMSE vs the exact ODE sample (mean over 8 samples):")
    print("  " + "sampler + schedule".ljust(34) + "".join(f"NFE {n}".rjust(10) for n in nfes))
    for label in row_labels:
        print("  " + label.ljust(34) + "".join(
            (f"{errors[(label, n)]:.3g}" if (label, n) in errors else "-").rjust(10) for n in nfes))
    for p in written:
        print(f"[demo] wrote {p}")
    print(f"[demo] done in {time.time() - t0:.1f} s; results in {out}")


if __name__ == "__main__":
    main()

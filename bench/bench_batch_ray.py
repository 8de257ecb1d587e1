"""Throughput of the batch runner's two engines on the same servers: the plain runner (`--server` list)
against `--engine ray` attached to those servers, for 1, 2 and 4 headless CPU ComfyUI servers running
the exact-denoiser lab workflow, on a local Ray cluster kept on loopback.

    eval "$(bash scripts/host.sh)"; "$FEWSTEP_PYTHON" -m bench.bench_batch_ray [--jobs 48] [--servers 1 2 4]

Prints a markdown table: jobs per minute once jobs flow (engine start-up and /object_info checks
reported apart), the runner's own time per job (submission to record, minus
the server's execution time, from the manifest) and its median, per engine and server count. Each row is
one run; the servers are booted once and shared by both engines, the engines alternate per count."""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep Ray on loopback (see tests/test_batch_ray.py)
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

from tests.support.comfy_host import ComfyServer  # noqa: E402

from batch import Options, plan_from_cli, run_batch  # noqa: E402
from batch.manifest import read_records  # noqa: E402
from batch.ray_engine import RayEngine, RaySettings  # noqa: E402

WORKFLOW = REPO / "example_workflows" / "api" / "lab_ksampler_api.json"
SETTINGS = ["Empty Latent.width=64", "Empty Latent.height=64", "Empty Latent.batch_size=1", "KSampler.steps=8"]


def one_run(engine_name, urls, jobs, root, seed0):
    plan = plan_from_cli(SETTINGS, [("sweep", f"KSampler.seed={seed0}..{seed0 + jobs - 1}")])
    out = root / f"{engine_name}-{len(urls)}-{seed0}"
    engine = None
    if engine_name == "ray":
        engine = RayEngine(RaySettings(address=os.environ["FEWSTEP_BENCH_RAY"], attach=tuple(urls),
                                       cpus_per_server=0.25))
    t0 = time.perf_counter()
    summary = run_batch(WORKFLOW, plan, urls, out, Options(timeout=300, poll=1.0), engine=engine, quiet=True)
    wall = time.perf_counter() - t0
    assert summary.ok, f"{engine_name} x{len(urls)}: not every job done"
    recs = read_records(out / "manifest.jsonl")[0]
    done = [r for r in recs if r.get("status") == "done"]
    overhead = [r["timings"]["total_s"] - r["timings"].get("run_s", 0.0) for r in done]
    # steady state: from the first job handed out to the last one recorded (engine start-up excluded)
    stamps = [time.mktime(time.strptime(r["time"][:19], "%Y-%m-%dT%H:%M:%S")) + float(r["time"][19:] or 0)
              for r in recs if r.get("status") in ("submitted", "done")]
    span = max(stamps) - min(stamps)
    return {"wall": wall, "per_min": 60 * jobs / span, "startup": wall - span,
            "overhead_mean": statistics.mean(overhead), "overhead_median": statistics.median(overhead)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=48)
    ap.add_argument("--servers", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    import ray
    ctx = ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
    os.environ["FEWSTEP_BENCH_RAY"] = ctx.address_info["gcs_address"]
    root = Path(tempfile.mkdtemp(prefix="fewstep-bench-ray-"))
    servers = [ComfyServer(root / f"server{i}") for i in range(max(args.servers))]
    boots = [threading.Thread(target=s.start) for s in servers]
    for t in boots:
        t.start()
    for t in boots:
        t.join()
    rows = []
    try:
        seed = 0
        for n in args.servers:
            urls = [s.url for s in servers[:n]]
            for name in ("plain", "ray"):
                r = one_run(name, urls, args.jobs, root, seed)
                seed += args.jobs
                rows.append((name, n, r))
                print(f"{name} x{n}: {r['per_min']:.1f} jobs/min, overhead {r['overhead_median']*1000:.0f} ms median",
                      file=sys.stderr, flush=True)
    finally:
        for s in servers:
            s.stop()
        ray.shutdown()
    print(f"\n{args.jobs} lab jobs (64x64, 8 steps) per row, {os.cpu_count()} CPU cores\n")
    print("| engine | servers | jobs/min (first hand-out to last record) | start-up and checks (s) | wall (s) | "
          "runner time per job, mean / median (ms) |")
    print("|---|---|---|---|---|---|")
    for name, n, r in rows:
        print(f"| {name} | {n} | {r['per_min']:.1f} | {r['startup']:.1f} | {r['wall']:.1f} | "
              f"{r['overhead_mean']*1000:.0f} / {r['overhead_median']*1000:.0f} |")


if __name__ == "__main__":
    main()

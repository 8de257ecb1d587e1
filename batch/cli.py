"""Command line: python -m batch WORKFLOW_API.json --server URL ... --sweep NODE.INPUT=v1,v2 ..."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .runner import RunError, run_batch
from .sweep import merge_plans, plan_from_cli, plan_from_file
from .workflow import InputError, load_workflow
from .worker import Options

EPILOG = """\
targets: NODE.INPUT, NODE being a node id ("4") or its title ("KSampler"), INPUT a value input.
values:  comma list (euler,dpmpp_2m), integer range lo..hi (both included: 0..9), or a JSON list
         (["a, b","c"]); typed and checked against the server's /object_info before anything is sent.
sweeps cross each other (2 samplers x 3 step counts = 6 jobs); --zip TARGET=VALUES pairs its values
with the --sweep just before it instead (value i with value i).
The output folder holds manifest.jsonl (one JSON line per job event) and one sub-folder per job.
Running the same command again resumes: jobs recorded done are never sent again.

example:
  python -m batch example_workflows/api/lab_ksampler_api.json --server 127.0.0.1:8188 --server 127.0.0.1:8189 \\
      --sweep KSampler.sampler_name=euler,dpmpp_2m --sweep KSampler.steps=4,6,8 --set "Empty Latent.width=64" \\
      --out runs/sampler-steps
exit status: 0 every job done, 1 some job failed or was not run, 2 bad input (nothing sent)."""


class _Axis(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, "axes", None) or [])
        items.append(("zip" if option_string == "--zip" else "sweep", values))
        namespace.axes = items


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m batch", description="Run sweeps of an API-format ComfyUI "
                                "workflow over one or several ComfyUI servers; resumable, nothing run twice.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workflow", help="API-format workflow JSON (Workflow > Export (API) in ComfyUI)")
    p.add_argument("--server", action="append", default=[], metavar="URL",
                   help="ComfyUI server, repeatable or comma-separated (one per GPU); default http://127.0.0.1:8188")
    p.add_argument("--sweep", action=_Axis, dest="axes", metavar="NODE.INPUT=VALUES", help="an axis of the sweep")
    p.add_argument("--zip", action=_Axis, dest="axes", metavar="NODE.INPUT=VALUES",
                   help="zipped with the preceding --sweep (same number of values)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", help="a fixed value for all jobs")
    p.add_argument("--sweep-file", metavar="JSON", help='{"set": {T: v}, "sweep": {T: [..]}, "zip": [{T1: [..], T2: [..]}]}')
    p.add_argument("--out", metavar="DIR", help="output folder (default: batch-<workflow name>); reuse it to resume")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="per job, from submission (default 3600)")
    p.add_argument("--job-retries", type=int, default=3, help="re-queues of a job whose server dropped (default 3)")
    p.add_argument("--server-retries", type=int, default=5,
                   help="failed reconnects in a row before a server is given up (default 5)")
    p.add_argument("--backoff", type=float, default=1.0, metavar="S",
                   help="first reconnect pause, doubled each time up to 30 s (default 1)")
    p.add_argument("--poll", type=float, default=2.0, metavar="S", help="status check interval (default 2)")
    p.add_argument("--include-temp", action="store_true", help="also fetch preview (temp) images")
    p.add_argument("--skip-checks", action="store_true", help="do not check inputs against /object_info")
    p.add_argument("--dry-run", action="store_true", help="check and list the jobs; send nothing")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    ray = p.add_argument_group("cluster engine (--engine ray; needs pip install 'comfyui-fewstep[ray]')")
    ray.add_argument("--engine", choices=("servers", "ray"), default="servers",
                     help="servers: the --server list (default); ray: Ray places one ComfyUI server per GPU "
                          "(--server URLs, if given, are attached to instead of starting servers)")
    ray.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster ('auto', host:6379, "
                     "ray://host:10001); default: start a local one")
    ray.add_argument("--ray-servers", type=int, default=0, metavar="N",
                     help="server actors to start (default: one per GPU in the cluster, one if it has none)")
    ray.add_argument("--ray-comfyui", metavar="DIR", help="ComfyUI folder on every node (default: $COMFYUI_PATH there)")
    ray.add_argument("--ray-python", metavar="EXE", help="python that runs ComfyUI on the nodes (default: Ray's)")
    ray.add_argument("--ray-comfy-arg", action="append", default=[], metavar="ARG",
                     help="extra main.py argument, repeatable (e.g. --ray-comfy-arg=--lowvram)")
    ray.add_argument("--ray-gpus-per-server", type=float, default=None, metavar="G",
                     help="GPUs per server actor (default 1 when the cluster has GPUs, else 0)")
    ray.add_argument("--ray-cpus-per-server", type=float, default=1.0, metavar="C", help="CPUs per server actor (default 1)")
    ray.add_argument("--ray-startup-timeout", type=float, default=300.0, metavar="S",
                     help="seconds for a server to come up (default 300)")
    ray.add_argument("--ray-max-restarts", type=int, default=3, metavar="N",
                     help="restarts of a dead actor, each with a fresh server (default 3)")
    return p


def ray_engine(args, servers):
    """The Ray engine for these arguments (imported only here: the plain runner needs no Ray)."""
    from .ray_engine import RayEngine, RaySettings
    try:
        settings = RaySettings(address=args.ray_address, servers=args.ray_servers, comfyui=args.ray_comfyui,
                               python=args.ray_python, comfy_args=tuple(args.ray_comfy_arg),
                               gpus_per_server=args.ray_gpus_per_server, cpus_per_server=args.ray_cpus_per_server,
                               attach=tuple(servers), startup_timeout=args.ray_startup_timeout,
                               max_restarts=args.ray_max_restarts)
    except ValueError as e:
        raise InputError(str(e)) from None
    return RayEngine(settings)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    default = [] if args.engine == "ray" else ["http://127.0.0.1:8188"]
    servers = [s for item in (args.server or default) for s in item.split(",") if s.strip()]
    out = Path(args.out) if args.out else Path(f"batch-{Path(args.workflow).stem}")
    options = Options(timeout=args.timeout, job_retries=args.job_retries, server_retries=args.server_retries,
                      backoff=args.backoff, poll=args.poll, include_temp=args.include_temp)
    try:
        plan = plan_from_cli(args.set, getattr(args, "axes", None) or [])
        if args.sweep_file:
            plan = merge_plans(plan_from_file(args.sweep_file), plan)
        if args.engine == "ray":
            load_workflow(args.workflow)  # a UI-format file is refused before any cluster starts
        engine = ray_engine(args, servers) if args.engine == "ray" else None
        summary = run_batch(args.workflow, plan, servers, out, options, skip_checks=args.skip_checks,
                            dry_run=args.dry_run, quiet=args.quiet, engine=engine)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0 if summary.ok or args.dry_run else 1

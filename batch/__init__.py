"""Headless batch runs of ComfyUI workflows over its HTTP API: sweeps over node inputs, a work queue
over several servers, resumable from a JSONL manifest. Standard library only; never imported by the
node pack itself. Entry point: `python -m batch --help` from the pack folder."""
from .runner import RunError, Summary, run_batch
from .sweep import Plan, merge_plans, plan_from_cli, plan_from_file
from .workflow import InputError
from .worker import Options

__all__ = ["run_batch", "Summary", "RunError", "InputError", "Options", "Plan", "plan_from_cli",
           "plan_from_file", "merge_plans"]

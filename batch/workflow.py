"""API-format workflows: loading (with a clear message for UI-format files), addressing a node by
id or title, and the job key that identifies one fully-specified prompt."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path


class InputError(ValueError):
    """Bad workflow or sweep input, found before anything is sent; the message says how to fix it."""


EXPORT_HINT = ("The batch runner needs the API format. In ComfyUI open the workflow and use "
               "Workflow menu > Export (API) (older frontends: Settings > enable 'Dev mode', then "
               "'Save (API Format)'); the example_workflows/api/*_api.json files are in that format.")


def load_workflow(path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"workflow file {str(path)!r} does not exist") from None
    except ValueError as e:
        raise InputError(f"workflow file {str(path)!r} is not valid JSON: {e}") from None
    return check_api_format(data, str(path))


def check_api_format(data, name="workflow") -> dict:
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data["prompt"]:
        data = data["prompt"]  # a saved /prompt request body: {"prompt": {...}, "extra_data": ...}
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and ("links" in data or "last_node_id" in data):
        raise InputError(f"{name} is a UI-format workflow (it has 'nodes' and 'links', as the editor saves "
                         f"it), not an API-format one. {EXPORT_HINT}")
    if not isinstance(data, dict) or not data:
        raise InputError(f"{name} is not an API-format workflow (expected an object of node id -> "
                         f"{{'class_type', 'inputs'}}). {EXPORT_HINT}")
    for node_id, node in data.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs", {}), dict):
            raise InputError(f"{name}: entry {node_id!r} is not an API-format node (no 'class_type'/'inputs'). "
                             f"{EXPORT_HINT}")
    return data


def title_of(node: dict) -> str | None:
    return (node.get("_meta") or {}).get("title")


def describe_nodes(workflow: dict) -> str:
    return "; ".join(f"{nid} = {title_of(n) or '(no title)'} [{n['class_type']}]" for nid, n in workflow.items())


def resolve_node(workflow: dict, ref: str) -> str:
    """Node id for `ref`, an id or a title (`_meta.title` as the editor shows it). Titles must be unique."""
    if ref in workflow:
        return ref
    hits = [nid for nid, n in workflow.items() if title_of(n) == ref]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise InputError(f"node title {ref!r} is used by several nodes ({', '.join(hits)}); address one of "
                         f"them by id instead")
    folded = [nid for nid, n in workflow.items() if (title_of(n) or "").casefold() == ref.casefold()]
    hint = f" Did you mean {title_of(workflow[folded[0]])!r}?" if len(folded) == 1 else ""
    raise InputError(f"no node with id or title {ref!r} in the workflow.{hint} Nodes: {describe_nodes(workflow)}")


def job_key(prompt: dict) -> str:
    """Stable id of a fully-specified prompt: titles (_meta) do not change what runs, so they are left out."""
    stripped = {nid: {k: v for k, v in node.items() if k != "_meta"} for nid, node in prompt.items()}
    canon = json.dumps(stripped, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def apply_values(workflow: dict, values: dict) -> dict:
    """A copy of `workflow` with {(node_id, input): value} set."""
    prompt = copy.deepcopy(workflow)
    for (nid, name), value in values.items():
        prompt[nid].setdefault("inputs", {})[name] = value
    return prompt

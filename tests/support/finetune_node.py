"""'Few-Step Fine-tune (FewStep)' run through ComfyUI's own per-node execution function, as the
server runs it (inference mode, inputs as lists), for the fine-tune tests."""
import asyncio
import inspect

import pytest
import torch


def run_node(nodes, lists=(), **inputs):
    """The node's outputs. Each input arrives as a list of one, as from a plain link; the names in
    `lists` are given as lists already (what a node with list outputs upstream sends); an input given
    as None is left out (an optional input not connected). Checks that the graph drawn after the run
    is the trained schedule (the sigmas output)."""
    import execution
    cls = nodes.NODE_CLASS_MAPPINGS["FewStepFinetune"]
    # 0.3.75 takes hidden_inputs, 0.33 v3_data: pass what this host's signature has
    extra = {"hidden_inputs": {}} if "hidden_inputs" in inspect.signature(execution.get_output_data).parameters else {}
    given = {k: (v if k in lists else [v]) for k, v in inputs.items() if v is not None}
    with torch.inference_mode():
        out, ui, _, _ = asyncio.run(execution.get_output_data("test", "1", cls, given, **extra))
    result = [o[0] for o in out]
    drawn = [v for key, v in ui.items() if key != "text"]
    assert drawn and drawn[0] == pytest.approx(result[4].double().tolist(), rel=1e-6), ui
    return result


def node_inputs(**kw):
    """A small, fast setting of every required widget (fp32 on CPU), with `kw` (model, latents,
    positive, sigmas and any override) on top."""
    return {**dict(steps=3, train_steps=2, batch_size=2, learning_rate=1e-3, rank=4, spread=0.5, weighting="importance",
                   anchor=0.25, rounds=1, seed=0, algorithm="LoRA", optimizer="AdamW", training_dtype="fp32",
                   lora_dtype="fp32", gradient_checkpointing=False), **kw}

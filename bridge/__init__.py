"""ComfyUI-facing code that is not a node: dropdown registration (registry, dropdowns), the model's
time axis (model_time), the exact-denoiser lab model (lab_model) and its runner (lab_runner), the
optimised-schedule cache and runs (schedule_cache, schedule_opt), the σ-graph routes (sigma_graph), the launch-free UNet (cuda_graph), the guidance window and CFG++ (guidance), the distilled presets
(distilled), the fine-tune trainer (finetune; its teacher solves finetune_teacher, its schedule gate
finetune_gate, its report finetune_report, the node's call finetune_node)
and the solver wrappers the nodes hand to ComfyUI (unipc, freeu, recipe, ksampler).

Layers: samplers/ and freeu/ (maths) -> bridge/ -> nodes/. Nothing here imports nodes/."""


def register(node_classes: dict) -> None:
    """What the pack adds to ComfyUI beside its nodes, done once at import: the dropdown entries
    and, when a server is running, the /fewstep/... routes serving these node classes' graphs."""
    from . import dropdowns, sigma_graph
    dropdowns.register()
    sigma_graph.use_nodes(node_classes)
    sigma_graph.register_routes()

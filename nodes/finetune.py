"""Few-Step Fine-tune (FewStep): Phase 2 of the few-step optimiser — a LoRA trained on the steps of
an optimised schedule, optionally alternated with Phase 1 (training machinery: bridge/finetune.py;
weighting: samplers/finetune_loss.py; docs/finetune.md)."""
from __future__ import annotations

import torch
from comfy.weight_adapter import adapter_maps
from comfy_api.latest import io

from ..bridge import finetune as ft
from ..bridge.finetune_node import one_value_each, run_node
from ..bridge.finetune_report import loss_curve_image
from ..bridge.schedule_opt import ode_samplers
from ..bridge.sigma_graph import sigma_ui
from ..samplers.finetune_loss import ESTIMATORS, LR_SCHEDULES

CATEGORY = "FewStep/training"


class FewStepFinetune(io.ComfyNode):
    SIGMA_GRAPH = {}  # the trained schedule, drawn after the run from the UI message (bridge/sigma_graph.py)

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepFinetune",
            display_name="Few-Step Fine-tune (FewStep)",
            category=CATEGORY,
            is_input_list=True,  # a list of training latents (a folder of images through VAE Encode) is one set
            description=(
                "Phase 2 of the few-step optimiser (Huang 2024), experimental: trains a LoRA with ComfyUI's own "
                "training machinery, aimed at sampling on YOUR optimised schedule. On the pack's ground truth the "
                "paper's data target has not beaten Phase 1 alone on a well-trained model, while target 'trajectory' "
                "cut the distance to the true distribution to about a third at 5 steps (docs/finetune.md); turn on "
                "only_on_schedule to keep other step counts untouched, and compare the tuned model with the "
                "untuned one before keeping the LoRA. The data target's denoising loss is taken at "
                "noise levels around the schedule's sigmas, each step weighted by how much it contributes to the "
                "final sample (derived from the schedule, see docs/finetune.md). With rounds > 1 the schedule is "
                "re-optimised on the tuned model between rounds (Phase 1 + Phase 2 alternated). target 'trajectory' "
                "trains instead towards the untuned model's own many-step solve (the sampler's N steps land where its "
                "fine solve lands); with cfg > 1 and the negative you sample with, of the guided solve. Outputs the model "
                "with the LoRA, the LoRA for 'Save LoRA Weights' / 'Load LoRA Model', a loss curve and a report."),
            inputs=[
                io.Model.Input("model", tooltip="The UNet model (SD1.x / SDXL) to fine-tune."),
                io.Latent.Input("latents", tooltip="Training images encoded with the model's VAE: a batch, or a list "
                                "(e.g. 'Load Image Dataset from Folder' into VAE Encode), all of one size."),
                io.Conditioning.Input("positive", tooltip="Conditioning the training images are denoised with (e.g. their caption)."),
                io.Int.Input("steps", default=8, min=1, max=200,
                             tooltip="Sampling steps N of the schedule (used to pick it from the optimiser's record when SIGMAS is not connected)."),
                io.Int.Input("train_steps", default=200, min=1, max=100000, tooltip="Optimiser steps per round."),
                io.Int.Input("batch_size", default=4, min=1, max=4096, tooltip="Latents per training step (drawn with replacement)."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-7, tooltip="Learning rate of the adapter weights."),
                io.Int.Input("rank", default=8, min=1, max=128, tooltip="Rank of the LoRA (LoHa/LoKr: their rank parameter)."),
                io.Float.Input("spread", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Noise levels are drawn within this fraction of the log-distance to the neighbouring steps (0 = exactly the schedule's sigmas)."),
                io.Combo.Input("weighting", options=list(ESTIMATORS), default="importance",
                               tooltip="importance: steps drawn with probability equal to their schedule weight (lower variance); explicit: steps drawn uniformly, loss multiplied by the weight. Same expected loss."),
                io.Float.Input("anchor", default=0.0, min=0.0, max=0.95, step=0.05,
                               tooltip="Share of each batch trained at ordinary noise levels (timestep uniform, as Train LoRA does) to hold the model in place away from the steps; 0 = schedule steps only."),
                io.Int.Input("rounds", default=1, min=1, max=8,
                             tooltip="Phase 2 rounds; between rounds Phase 1 re-optimises the schedule on the tuned model (through the schedule cache)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate="fixed",
                             tooltip="Seed of the LoRA initialisation, batches, noise and noise levels."),
                io.Combo.Input("algorithm", options=list(adapter_maps), default="LoRA", tooltip="ComfyUI adapter type to train."),
                io.Combo.Input("optimizer", options=list(ft.OPTIMIZERS), default="AdamW", tooltip="Optimiser."),
                io.Combo.Input("training_dtype", options=list(ft.DTYPES), default="bf16", tooltip="Compute dtype during training (bf16 needs a GPU that has it; fp32 on CPU)."),
                io.Combo.Input("lora_dtype", options=list(ft.DTYPES), default="bf16", tooltip="Dtype of the LoRA weights."),
                io.Boolean.Input("gradient_checkpointing", default=True, tooltip="Recompute activations in the backward pass (less memory, about a third slower)."),
                io.Sigmas.Input("sigmas", optional=True, tooltip="The schedule to fine-tune for. Not connected: the optimiser's schedule for this model (Optimise Schedule's MODEL output or its cache)."),
                io.Combo.Input("phase1_sampler", options=ode_samplers(), default="dpmpp_2m", optional=True,
                               tooltip="Sampler Phase 1 optimises for between rounds, and the one the trajectory target is made for (the record's own sampler when the schedule came from the optimiser)."),
                io.Int.Input("phase1_mc_samples", default=8, min=1, max=256, optional=True, tooltip="Phase 1 Monte-Carlo noises between rounds."),
                io.Int.Input("phase1_grid", default=120, min=8, max=400, optional=True, tooltip="Phase 1 candidate sigmas between rounds."),
                io.Combo.Input("lr_schedule", options=list(LR_SCHEDULES), default="constant", optional=True,
                               tooltip="constant: Train LoRA's fixed learning rate; cosine: short warm-up, then decayed to 0 by each round's end, so the LoRA ends at a settled point rather than wherever the last noisy steps left it."),
                io.Float.Input("holdout", default=0.0, min=0.0, max=0.5, step=0.01, optional=True,
                               tooltip="Share of the latents (trajectory target: of the teacher's solves) never trained on. The same loss on them is checked 11 times a round and the weights of the best check are kept (early stopping); 0 = off."),
                io.Combo.Input("target", options=list(ft.TARGETS), default="data", optional=True,
                               tooltip="data: the paper's denoising loss towards your latents. trajectory: the outputs that make "
                                       "the sampler (phase1_sampler, or the optimiser record's; euler or dpmpp_2m) land on the "
                                       "untuned model's own fine solve of the schedule, so N steps follow many (distillation; "
                                       "latents are then used only by the anchor rows). With cfg > 1 the solves and the "
                                       "training are guided (positive and negative), as you will sample."),
                io.Combo.Input("anchor_target", options=list(ft.ANCHOR_TARGETS), default="data", optional=True,
                               tooltip="What the anchor rows are trained towards: data (your latents, Train LoRA's loss) or "
                                       "model (the untuned model's own output: holds the model in place without the data "
                                       "loss's noise)."),
                io.Boolean.Input("only_on_schedule", default=False, optional=True,
                                 tooltip="The MODEL output applies the LoRA only when sampled on the schedule it was trained "
                                         "for (the last round's); every other sampling runs the untuned weights. Keeps a "
                                         "trajectory-target LoRA from acting at other step counts. The LORA output is not gated."),
                io.Int.Input("teacher_steps", default=8, min=1, max=64, optional=True,
                             tooltip="Trajectory target: teacher solver steps per step of the schedule."),
                io.Int.Input("trajectories", default=64, min=1, max=65536, optional=True,
                             tooltip="Trajectory target: untuned solves from noise per round (each costs N x teacher_steps model calls)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01, optional=True,
                               tooltip="Trajectory target: the CFG you will sample the tuned model at. Above 1 the teacher "
                                       "solves the guided ODE and the LoRA is trained through both passes, so N guided steps "
                                       "follow the many-step guided solve; needs 'negative'. The data target takes 1 only."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="The negative prompt you will sample with (used only with cfg != 1)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the trained LoRA applied."),
                io.Custom("LORA_MODEL").Output(display_name="lora", tooltip="The LoRA (for Save LoRA Weights / Load LoRA Model)."),
                io.Image.Output(display_name="loss_curve", tooltip="Training loss per step, rounds marked."),
                io.String.Output(display_name="report", tooltip="Settings, each round's schedule and loss."),
                io.Sigmas.Output(display_name="sigmas", tooltip="The schedule the last round trained on (with rounds > 1 "
                                 "Phase 1 may have moved it; with only_on_schedule the MODEL applies the LoRA on it "
                                 "alone): sample on this."),
            ],
        )

    @classmethod
    def execute(cls, model, latents, positive, steps, train_steps, batch_size, learning_rate, rank, spread, weighting,
                anchor, rounds, seed, algorithm, optimizer, training_dtype, lora_dtype, gradient_checkpointing, sigmas=None,
                phase1_sampler="dpmpp_2m", phase1_mc_samples=8, phase1_grid=120, lr_schedule="constant",
                holdout=0.0, target="data", teacher_steps=8, trajectories=64, anchor_target="data", only_on_schedule=False,
                cfg=1.0, negative=None) -> io.NodeOutput:
        a = one_value_each({k: v for k, v in locals().items() if k != "cls"})  # lists in (is_input_list)
        ft.check_unet(a["model"])
        ft.check_latents(a["latents"])
        settings = ft.TrainSettings(steps=int(a["train_steps"]), batch_size=int(a["batch_size"]),
                                    learning_rate=float(a["learning_rate"]), rank=int(a["rank"]), algorithm=a["algorithm"],
                                    optimizer=a["optimizer"], spread=float(a["spread"]), estimator=a["weighting"],
                                    anchor=float(a["anchor"]), training_dtype=a["training_dtype"], lora_dtype=a["lora_dtype"],
                                    gradient_checkpointing=bool(a["gradient_checkpointing"]), seed=int(a["seed"]),
                                    lr_schedule=a["lr_schedule"], holdout=float(a["holdout"]), target=a["target"],
                                    teacher_steps=int(a["teacher_steps"]), trajectories=int(a["trajectories"]),
                                    anchor_target=a["anchor_target"], cfg=float(a["cfg"]))
        result, text = run_node(a["model"], a["latents"], a["positive"], a["steps"], settings, int(a["rounds"]), a["sigmas"],
                                a["phase1_sampler"], int(a["phase1_mc_samples"]), int(a["phase1_grid"]),
                                bool(a["only_on_schedule"]), a["negative"])
        trained = torch.tensor(result.rounds[-1].sigmas, dtype=torch.float32)
        return io.NodeOutput(result.model, result.lora, loss_curve_image(result), text, trained, ui=sigma_ui(trained))


NODE_CLASS_MAPPINGS = {"FewStepFinetune": FewStepFinetune}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepFinetune": "Few-Step Fine-tune (FewStep)"}

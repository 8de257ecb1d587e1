"""Phase 2 of the few-step optimiser: a LoRA trained on the selected steps of a schedule, towards
the data (maths: samplers/finetune_loss.py) or towards the untuned model's own fine solve
(samplers/finetune_trajectory.py, bridge/finetune_teacher.py), and the Phase 1 / Phase 2
alternation; derivations in docs/finetune.md. The node's call is bridge/finetune_node.py.

Built on ComfyUI's own training pieces (comfy_extras/nodes_train.py, comfy/weight_adapter): its
adapters (LoRA, LoHa, LoKr, OFT) attached as weight wrappers, its bias-difference module, its
gradient-checkpointing patch, its model loading, and a `comfy.samplers.Sampler` run through
ComfyUI's own guider (conditioning processing, latent scaling, model patches and wrappers are the
real ones). What differs from TrainLoraNode is only what Phase 2 needs: the noise levels and loss
weights come from the schedule, the conditioning is shared by the whole batch (one forward per
batch), training can continue over several rounds with the same adapters and optimiser, and it is
cancellable between steps."""
from __future__ import annotations

import hashlib
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import comfy.model_management
import comfy.samplers
import comfy_extras.nodes_custom_sampler as custom_sampler
import comfy_extras.nodes_train as core_train
import node_helpers
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from comfy.weight_adapter import adapter_maps

from ..samplers.finetune_loss import (ANCHOR_WEIGHTINGS, ESTIMATORS, LR_SCHEDULES, SigmaSampler, UniformLevels,
                                      holdout_split, lr_factor, weighted_mse)
from ..samplers.finetune_trajectory import TARGET_SOLVERS
from .finetune_teacher import make_student_pairs, make_teacher_pairs

OPTIMIZERS = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam, "SGD": torch.optim.SGD,
              "RMSprop": torch.optim.RMSprop}
DTYPES = ("bf16", "fp32")
# data: the paper's denoising loss towards the training latents; trajectory: the denoiser outputs
# that make the few-step solve land on the untuned model's fine solve (samplers/finetune_trajectory.py)
TARGETS = ("data", "trajectory")
# the anchor rows' target: the latents (Train LoRA's loss) or the untuned model's own output
ANCHOR_TARGETS = ("data", "model")
# model_options key whose value changes with the trained weights: the schedule cache's model
# fingerprint covers model_options, so Phase 1 on the tuned model cannot hit the untuned entry.
LORA_DIGEST_KEY = "fewstep_lora_digest"
SIGMA_TOLERANCE = 1e-3
# Held-out checks per round (besides the one before the first step), and the most (latent, noise,
# sigma) draws one check evaluates: enough that the check's own noise is small against the changes it
# has to see, few enough that 10 checks cost about 15 % of a round at the default batch.
HOLDOUT_CHECKS = 10
HOLDOUT_MAX_DRAWS = 4096
# on_policy > 0: the student's own few-step solves are redone this many times a round, so the states
# it trains at follow it as it moves (each redo costs N model calls per teacher solve, no gradients)
STUDENT_REFRESHES = 8


class FinetuneError(ValueError):
    pass


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 200
    batch_size: int = 4
    learning_rate: float = 1e-4
    rank: int = 8
    algorithm: str = "LoRA"
    optimizer: str = "AdamW"
    spread: float = 0.5
    estimator: str = "importance"
    anchor: float = 0.0
    training_dtype: str = "bf16"
    lora_dtype: str = "bf16"
    gradient_checkpointing: bool = True
    seed: int = 0
    anchor_weighting: str = "x0"
    lr_schedule: str = "constant"
    holdout: float = 0.0
    target: str = "data"
    anchor_target: str = "data"
    solver: str = "dpmpp_2m"  # the sampler the trajectory target is made for
    teacher_steps: int = 8  # teacher solver steps per step of the schedule
    trajectories: int = 256  # teacher solves per round
    on_policy: float = 0.0  # trajectory target: share of rows at the student's own states (student_targets)
    cfg: float = 1.0  # trajectory target: the guidance scale the teacher solves and the student is trained at

    def __post_init__(self):
        for name in ("steps", "batch_size", "rank", "teacher_steps", "trajectories"):
            if int(getattr(self, name)) < 1:
                raise FinetuneError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise FinetuneError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        if self.algorithm not in adapter_maps:
            raise FinetuneError(f"algorithm must be one of {list(adapter_maps)}, got {self.algorithm!r}")
        if self.optimizer not in OPTIMIZERS:
            raise FinetuneError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if not (0.0 <= self.spread <= 1.0):
            raise FinetuneError(f"spread must be in [0, 1], got {self.spread}")
        if not (0.0 <= self.anchor < 1.0):
            raise FinetuneError(f"anchor must be in [0, 1), got {self.anchor}")
        anchored = int(round(float(self.anchor) * int(self.batch_size)))
        if anchored >= int(self.batch_size):
            raise FinetuneError(f"anchor: {self.anchor:g} of a batch of {self.batch_size} makes all {anchored} rows anchor "
                                f"rows and leaves none on the schedule's steps; lower anchor or raise batch_size")
        if self.anchor_weighting not in ANCHOR_WEIGHTINGS:
            raise FinetuneError(f"anchor_weighting must be one of {ANCHOR_WEIGHTINGS}, got {self.anchor_weighting!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise FinetuneError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not (0.0 <= self.on_policy <= 1.0):
            raise FinetuneError(f"on_policy must be in [0, 1], got {self.on_policy}")
        if self.on_policy > 0 and self.target != "trajectory":
            raise FinetuneError(f"on_policy: the student's own states exist for the trajectory target only; set target "
                                f"'trajectory' or on_policy 0 (got target {self.target!r})")
        if not (0.0 <= self.holdout < 1.0):
            raise FinetuneError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.anchor_target not in ANCHOR_TARGETS:
            raise FinetuneError(f"anchor_target must be one of {ANCHOR_TARGETS}, got {self.anchor_target!r}")
        if self.target not in TARGETS:
            raise FinetuneError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.target == "trajectory" and self.solver not in TARGET_SOLVERS:
            raise FinetuneError(f"phase1_sampler (or the optimiser record's sampler): the trajectory target is made "
                                f"for one of {TARGET_SOLVERS} (samplers whose "
                                f"step is linear in the model's outputs), got {self.solver!r}; pick one of them or "
                                f"target 'data'")
        if not (math.isfinite(self.cfg) and 0.0 <= self.cfg <= 100.0):
            raise FinetuneError(f"cfg must be a number in [0, 100] (ComfyUI's range), got {self.cfg}")
        if self.guided and self.target != "trajectory":
            raise FinetuneError(f"cfg: the data target's loss is the conditional denoiser's (it has no guided target); "
                                f"set cfg 1, or target 'trajectory' to distil the guided solve (got cfg {self.cfg:g})")
        if self.guided and self.anchor > 0 and self.anchor_target == "data":
            raise FinetuneError(f"anchor_target: with cfg {self.cfg:g} the anchor rows hold the guided output, which "
                                f"has no data target; set anchor_target 'model' or anchor 0")
        if self.estimator not in ESTIMATORS:
            raise FinetuneError(f"weighting must be one of {ESTIMATORS}, got {self.estimator!r}")
        for name in ("training_dtype", "lora_dtype"):
            if getattr(self, name) not in DTYPES:
                raise FinetuneError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")

    @property
    def guided(self) -> bool:
        """Whether the model is trained through CFG (both passes, positive and negative)."""
        return not math.isclose(float(self.cfg), 1.0)


# ----------------------------------------------------------------------------------------------
# Input checks (before any model call)

def model_sigma_range(model) -> tuple:
    ms = model.get_model_object("model_sampling")
    return float(ms.sigma_min), float(ms.sigma_max)


def check_unet(model):
    net = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(net, UNetModel):
        raise FinetuneError(f"model: Few-Step Fine-tune trains UNet models (SD1.x, SD2, SDXL; ComfyUI's UNetModel); "
                            f"this model's network is {type(net).__name__}")


def check_negative(settings: TrainSettings, negative):
    if settings.guided and not negative:
        raise FinetuneError(f"negative: cfg {settings.cfg:g} mixes positive and negative, but the negative conditioning "
                            f"is empty; connect the negative prompt you sample with, or set cfg 1")


def check_latents(latents) -> torch.Tensor:
    samples = latents.get("samples") if isinstance(latents, dict) else None
    if not torch.is_tensor(samples) or samples.ndim != 4 or samples.shape[0] < 1:
        raise FinetuneError("latents: expected a LATENT batch of at least one image (encode your training images "
                            "with VAE Encode and batch them)")
    if not torch.isfinite(samples).all():
        raise FinetuneError("latents: the LATENT holds NaN or infinite values")
    if latents.get("noise_mask") is not None:
        logging.info("FewStep fine-tune: the latent's noise_mask is ignored (whole latents are trained)")
    return samples


def check_schedule(model, sigmas) -> torch.Tensor:
    """The schedule as float64 (validated by the maths) and inside this model's sigma range: a
    schedule made for another model (SDXL sigmas on a flow model ...) is refused here."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
    try:
        SigmaSampler(tuple(s.tolist()), 0.0)
    except ValueError as e:
        raise FinetuneError(f"sigmas: {e}") from None
    lo, hi = model_sigma_range(model)
    top, bottom = float(s[0]), float(s[:-1].min())
    if top > hi * (1 + SIGMA_TOLERANCE) or bottom < lo * (1 - SIGMA_TOLERANCE):
        raise FinetuneError(f"sigmas: the schedule spans [{bottom:.6g}, {top:.6g}] but this model's sigmas lie in "
                            f"[{lo:.6g}, {hi:.6g}]; the schedule was made for another model")
    return s


def lora_digest(lora_sd: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(lora_sd):
        t = lora_sd[k].detach().float().cpu()
        h.update(k.encode())
        h.update(t.flatten()[:: max(1, t.numel() // 64)].numpy().tobytes())
        h.update(f"{float(t.double().sum()):.12e}".encode())
    return h.hexdigest()[:24]


# ----------------------------------------------------------------------------------------------
# The training sampler: one weighted denoising step per batch, through ComfyUI's guider

class _PhaseTwoSampler(comfy.samplers.Sampler):
    """Runs `step_fn(model_wrap, latents, extra_args)` inside guider.sample (where conds are processed
    and the model is loaded), with gradients on whatever the caller's context had."""

    def __init__(self, step_fn):
        self.step_fn = step_fn

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        model_wrap.conds = core_train.process_cond_list(model_wrap.conds)  # out of inference tensors
        with torch.inference_mode(False), torch.enable_grad():
            self.step_fn(model_wrap, latent_image, extra_args)
        return torch.zeros_like(latent_image)


def _noised(model_wrap, latent, noise, sigma):
    """(model input, sigma) for `latent` noised to `sigma` as ComfyUI's samplers noise it."""
    ms = model_wrap.inner_model.model_sampling
    sigma = sigma.to(latent.device, torch.float32)
    return ms.noise_scaling(sigma, noise.to(latent), latent, False), sigma


def _pair_loss(model_wrap, xt, sigma, target, weight, extra_args, dtype):
    with torch.autocast(xt.device.type, dtype=dtype, enabled=dtype != torch.float32):
        pred = model_wrap(xt, sigma.to(xt.device, torch.float32), **extra_args)
    return weighted_mse(pred, target, weight)


def _denoising_loss(model_wrap, latent, noise, sigma, weight, extra_args, dtype):
    xt, sigma = _noised(model_wrap, latent, noise, sigma)
    return _pair_loss(model_wrap, xt, sigma, latent, weight, extra_args, dtype)


@dataclass
class RoundRecord:
    round: int
    sigmas: list
    losses: list
    seconds: float
    phase1_seconds: float = 0.0
    held_out: list = field(default_factory=list)  # (step in the round, held-out loss)
    best_step: Optional[int] = None
    teacher_seconds: float = 0.0  # the untuned model's fine solves (trajectory target)
    student_seconds: float = 0.0  # the tuned-so-far model's own solves (on_policy > 0)


@dataclass
class LoraTrainer:
    """A clone of `model` with fresh trainable adapters on every weight ComfyUI can wrap; `train`
    may be called several times (alternation rounds) and keeps the adapters and optimiser."""
    model: object
    settings: TrainSettings
    lora: dict = field(default_factory=dict)
    losses: list = field(default_factory=list)
    _adapters: list = field(default_factory=list)
    _optimizer: object = None
    _trainable: list = field(default_factory=list)
    _steps_done: int = 0
    validation: list = field(default_factory=list)  # the last round's held-out checks (step, loss)
    best_step: Optional[int] = None  # the check whose weights were kept (holdout > 0)
    teacher: Optional[object] = None  # the last round's TeacherPairs (trajectory target)
    student_seconds: float = 0.0  # the last round's own solves (on_policy > 0)
    student: Optional[object] = None  # the last refresh's pairs at the model's own states (on_policy > 0)

    def __post_init__(self):
        check_unet(self.model)
        s = self.settings
        self.model = self.model.clone()
        self.dtype = node_helpers.string_to_torch_dtype(s.training_dtype)
        lora_dtype = node_helpers.string_to_torch_dtype(s.lora_dtype)
        self.model.set_model_compute_dtype(self.dtype)
        torch.manual_seed(int(s.seed))  # adapter initialisation (ComfyUI draws it from the global generator)
        adapter_cls = adapter_maps[s.algorithm]
        with torch.inference_mode(False):
            for name, module in self.model.model.named_modules():
                if not hasattr(module, "weight_function"):
                    continue
                if getattr(module, "weight", None) is not None:
                    key = f"{name}.weight"
                    if module.weight.ndim >= 2:
                        adapter = adapter_cls.create_train(module.weight, rank=int(s.rank), alpha=1.0).to(lora_dtype)
                        for pname, p in adapter.named_parameters():
                            self.lora[f"{name}.{pname}"] = p
                    else:
                        diff = torch.nn.Parameter(torch.zeros(module.weight.shape, dtype=lora_dtype))
                        adapter = core_train.BiasDiff(diff)
                        self.lora[f"{name}.diff"] = diff
                    self.model.add_weight_wrapper(key, adapter)
                    self._adapters.append(adapter)
                if getattr(module, "bias", None) is not None:
                    bias = torch.nn.Parameter(torch.zeros(module.bias.shape, dtype=lora_dtype))
                    adapter = core_train.BiasDiff(bias)
                    self.lora[f"{name}.diff_b"] = bias
                    self.model.add_weight_wrapper(f"{name}.bias", adapter)
                    self._adapters.append(adapter)
            self._trainable = [p for p in self.lora.values() if p.requires_grad]  # not the fixed alphas
            self._initial = [p.detach().clone() for p in self._trainable]
            self._optimizer = OPTIMIZERS[s.optimizer](self._trainable, lr=float(s.learning_rate))
            for p in self._trainable:
                p.requires_grad_(False)  # on only while training
        self.model.model.requires_grad_(False)
        self._mark()

    # -- helpers
    def _mark(self):
        """Writes the current weights' digest into model_options (see LORA_DIGEST_KEY)."""
        self.model.model_options[LORA_DIGEST_KEY] = lora_digest(self.lora)

    def _run_in_guider(self, positive, latents, step_fn, negative=None):
        if self.settings.guided:  # every model call of the round is the guided output, as the sampler's
            check_negative(self.settings, negative)
            guider = comfy.samplers.CFGGuider(self.model)
            guider.set_conds(positive, negative)
            guider.set_cfg(float(self.settings.cfg))
        else:
            guider = custom_sampler.Guider_Basic(self.model)
            guider.set_conds(positive)
        latents = latents.float()  # autocast picks the compute dtype
        dummy = torch.zeros(2)  # guider.sample needs non-empty sigmas; the sampler ignores them
        checkpointed = []
        if self.settings.gradient_checkpointing:
            checkpointed = core_train.find_all_highest_child_module_with_forward(self.model.model.diffusion_model)
            for m in checkpointed:
                core_train.patch(m)
        try:
            with torch.inference_mode(False):
                comfy.model_management.load_models_gpu([self.model], memory_required=1e20, force_full_load=True)
                guider.sample(torch.zeros_like(latents), latents, _PhaseTwoSampler(step_fn), dummy,
                              disable_pbar=True, seed=int(self.settings.seed))
        finally:
            for m in checkpointed:
                core_train.unpatch(m)

    @contextmanager
    def _untuned(self):
        """The adapters at their starting values (ComfyUI's adapters start as the identity: the base
        model) for the duration, the trained values restored after."""
        trained = [p.detach().clone() for p in self._trainable]
        try:
            with torch.no_grad():
                for p, v in zip(self._trainable, self._initial):
                    p.copy_(v)
            yield
        finally:
            with torch.no_grad():
                for p, v in zip(self._trainable, trained):
                    p.copy_(v)

    # -- public
    def train(self, latents: torch.Tensor, positive, sigmas, steps: Optional[int] = None,
              progress: Optional[Callable[[int, int], None]] = None, sigma_sampler=None, batch_fn=None,
              negative=None) -> list:
        """`steps` optimiser steps of the schedule-weighted loss; returns their losses. Data target:
        the denoising loss around the schedule's steps. Trajectory target: first the untuned model's
        fine solves on the schedule (`self.teacher`), then the loss towards their step targets.
        `sigma_sampler` (anything with draw(count, generator) -> (sigmas, weights, index)) replaces
        the schedule's sampler (the studies' uniform-noise control); `batch_fn(generator) -> (index,
        noise, sigmas, weights)` replaces the whole batch draw (tests use a fixed batch); both are
        for the data target. With settings.cfg != 1 (trajectory target) every model call, the
        teacher's, the student's and the anchor's, is the CFG mix of `positive` and `negative`.

        With settings.holdout > 0 that share of the latents (trajectory target: of the teacher's
        solves) is never trained on: the same loss on a fixed draw of them is checked before the
        first step and HOLDOUT_CHECKS times in the round, and the adapter weights of the best check
        are restored at the end (`self.validation`). The check holds the anchor's share of rows only for
        the data target with the data anchor; otherwise it covers the schedule's steps alone."""
        s = self.settings
        steps = int(s.steps if steps is None else steps)
        trajectory = s.target == "trajectory"
        if trajectory and (sigma_sampler is not None or batch_fn is not None):
            raise FinetuneError("the trajectory target trains on the schedule's own steps; sigma_sampler and batch_fn "
                                "apply to the data target")
        lo, hi = model_sigma_range(self.model)
        schedule = torch.as_tensor(sigmas, dtype=torch.float64).flatten() if sigmas is not None else None
        sampler = sigma_sampler or SigmaSampler(tuple(schedule.tolist()), float(s.spread), s.estimator, lo, hi)
        gen = torch.Generator().manual_seed(int(s.seed) * 1_000_003 + self._steps_done)
        count = int(s.trajectories) if trajectory else latents.shape[0]
        pool, held = torch.arange(count), None
        latent_pool = torch.arange(latents.shape[0])
        if s.holdout > 0:
            try:
                pool, held = holdout_split(count, float(s.holdout), int(s.seed))
            except ValueError as e:
                raise FinetuneError(str(e).replace("latents", "teacher solves (trajectories)") if trajectory else str(e)) from None
            if not trajectory:
                latent_pool = pool
        losses = []
        self.validation = []  # (optimiser steps done in this round, held-out loss)
        check = comfy.model_management.throw_exception_if_processing_interrupted
        trainable = self._trainable
        anchor_levels = UniformLevels(self.model.get_model_object("model_sampling").sigmas.double().cpu(),
                                      s.anchor_weighting)
        base_lr = float(s.learning_rate)
        rows = int(s.batch_size)
        keep = int(round(float(s.anchor) * rows))  # anchor rows per batch

        def data_draw(generator, count_rows, index_pool, anchored, index=None):
            """(latent index, noise, sigmas, weights): the first `anchored` rows at TrainLoraNode's noise
            levels (timestep uniform over the model's levels), so the model away from the steps is held
            in place; the others around the schedule's steps (data target only)."""
            if index is None:
                index = index_pool[torch.randint(0, index_pool.numel(), (count_rows,), generator=generator)]
            noise = torch.randn((count_rows,) + tuple(latents.shape[1:]), generator=generator)
            if trajectory:  # data rows are all anchor rows there
                sigma, weight, _ = anchor_levels.draw(count_rows, generator)
                return index, noise, sigma, weight
            sigma, weight, _ = sampler.draw(count_rows, generator)
            if anchored:
                a_sigma, a_weight, _ = anchor_levels.draw(anchored, generator)
                sigma, weight = torch.cat([a_sigma, sigma[anchored:]]), torch.cat([a_weight, weight[anchored:]])
            return index, noise, sigma, weight

        def data_rows(model_wrap, data, drawn):
            index, noise, sigma, weight = drawn
            latent = data[index.to(data.device)]
            xt, sig = _noised(model_wrap, latent, noise, sigma)
            return xt, sig, latent, weight

        def pair_rows(data, drawn):
            xs, sig, target, weight = drawn
            return xs.to(data), sig.to(data.device, torch.float32), target.to(data), weight

        def batch(model_wrap, data, pairs, extra_args, student):
            if batch_fn is not None:
                return data_rows(model_wrap, data, batch_fn(gen))
            if not trajectory:
                xs, sig, target, weight = data_rows(model_wrap, data, data_draw(gen, rows, latent_pool, keep))
            else:
                own = int(round(float(s.on_policy) * (rows - keep))) if student is not None else 0
                parts = [pair_rows(data, source.draw(count_rows, pool, s.estimator, gen))
                         for source, count_rows in ((pairs, rows - keep - own), (student, own)) if count_rows]
                xs, sig, target, weight = (torch.cat(column) for column in zip(*parts))
                if keep:
                    ax, asig, atarget, aweight = data_rows(model_wrap, data, data_draw(gen, keep, latent_pool, keep))
                    xs, sig, target = torch.cat([ax, xs]), torch.cat([asig, sig]), torch.cat([atarget, target])
                    weight = torch.cat([aweight, weight])
            if keep and s.anchor_target == "model":
                # the untuned model's own output as the anchor rows' target: zero gradient where the
                # adapters have not moved the model, so they hold it without the data loss's noise
                with self._untuned(), torch.no_grad(), \
                        torch.autocast(xs.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    target = torch.cat([model_wrap(xs[:keep], sig[:keep], **extra_args).float(), target[keep:]])
            return xs, sig, target, weight

        every = max(1, steps // HOLDOUT_CHECKS)
        best = {}
        held_parts = []  # the held-out draw in chunks of the batch size

        def make_held_draw(pairs):
            # the same draw in every round on the same schedule, whatever the steps done before
            vgen = torch.Generator().manual_seed(int(s.seed) * 1_000_003 + 0x7E57)
            total = min(max(held.numel(), 8 * rows), HOLDOUT_MAX_DRAWS)
            if trajectory:
                drawn = pairs.draw(total, held, s.estimator, vgen)
            else:
                # model-target anchor rows have no data loss to check: the check is then on the steps alone
                anchored = 0 if s.anchor_target == "model" else int(round(float(s.anchor) * total))
                drawn = data_draw(vgen, total, held, anchored,
                                  index=held[torch.arange(total) % held.numel()])
            for a in range(0, total, rows):
                held_parts.append(tuple(t[a:a + rows] for t in drawn))

        def held_out_check(model_wrap, data, extra_args, done):
            total = 0.0
            with torch.no_grad():
                for part in held_parts:
                    xt, sig, target, weight = pair_rows(data, part) if trajectory else data_rows(model_wrap, data, part)
                    total += float(_pair_loss(model_wrap, xt, sig, target, weight, extra_args, self.dtype)) * xt.shape[0]
            value = total / sum(part[0].shape[0] for part in held_parts)
            self.validation.append((done, value))
            if not best or value < best["loss"]:
                best.update(loss=value, step=done, weights=[p.detach().clone() for p in trainable])

        def step_fn(model_wrap, data, extra_args):
            pairs = None
            if trajectory:
                tgen = torch.Generator().manual_seed(int(s.seed) * 1_000_003 + 0x7EAC + self._steps_done)
                with self._untuned():
                    pairs = make_teacher_pairs(self.model, model_wrap, schedule, data, s, extra_args, self.dtype, tgen,
                                               check)
                self.teacher = pairs
            if held is not None:
                make_held_draw(pairs)
                held_out_check(model_wrap, data, extra_args, 0)
            for p in trainable:
                p.requires_grad_(True)
            student, refresh = None, max(1, steps // STUDENT_REFRESHES)
            self.student_seconds = 0.0
            for i in range(steps):
                check()
                if trajectory and s.on_policy > 0 and i % refresh == 0:
                    student = self.student = make_student_pairs(pairs, schedule, model_wrap, s, extra_args, self.dtype,
                                                                data.device, check)
                    self.student_seconds += student.seconds
                xt, sig, target, weight = batch(model_wrap, data, pairs, extra_args, student)
                for group in self._optimizer.param_groups:
                    group["lr"] = base_lr * lr_factor(i, steps, s.lr_schedule)
                loss = _pair_loss(model_wrap, xt, sig, target, weight, extra_args, self.dtype)
                if not torch.isfinite(loss):
                    raise FinetuneError(f"the loss became {float(loss)} at step {self._steps_done + i + 1}; lower "
                                        f"learning_rate or train in fp32")
                self._optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._optimizer.step()
                losses.append(float(loss.detach()))
                if progress is not None:
                    progress(i + 1, steps)
                if held is not None and ((i + 1) % every == 0 or i + 1 == steps):
                    held_out_check(model_wrap, data, extra_args, i + 1)
            if best:
                with torch.no_grad():
                    for p, w in zip(trainable, best["weights"]):
                        p.copy_(w)

        try:
            self._run_in_guider(positive, latents, step_fn, negative)
        finally:
            for p in trainable:
                p.requires_grad_(False)
            self._steps_done += len(losses)
            self.losses.extend(losses)
            self.best_step = best.get("step")
            self._mark()
        return losses

    @torch.no_grad()
    def loss(self, latents: torch.Tensor, positive, noise: torch.Tensor, sigma: torch.Tensor,
             weight: Optional[torch.Tensor] = None) -> float:
        """The weighted denoising loss of the current model on one fixed batch (no update)."""
        weight = torch.ones(latents.shape[0], dtype=torch.float64) if weight is None else weight
        out = {}

        def step_fn(model_wrap, data, extra_args):
            with torch.no_grad():
                out["loss"] = float(_denoising_loss(model_wrap, data, noise, sigma, weight, extra_args, self.dtype))

        self._run_in_guider(positive, latents, step_fn)
        return out["loss"]

    def lora_state(self) -> dict:
        """The trained adapter tensors under ComfyUI's LORA_MODEL keys (what TrainLoraNode returns)."""
        lora_dtype = node_helpers.string_to_torch_dtype(self.settings.lora_dtype)
        return {k: v.detach().to(lora_dtype).clone() for k, v in self.lora.items()}


# ----------------------------------------------------------------------------------------------
# Alternation and the node's one call

@dataclass
class FinetuneResult:
    model: object
    lora: dict
    rounds: list
    settings: TrainSettings
    adapters: list = field(default_factory=list)  # the weight wrappers the LoRA acts through

    @property
    def losses(self) -> list:
        return [v for r in self.rounds for v in r.losses]


def finetune(model, latents: dict, positive, sigmas, settings: TrainSettings, rounds: int = 1,
             phase1: Optional[Callable[[object, int], torch.Tensor]] = None,
             progress: Optional[Callable[[int, int], None]] = None,
             after_round: Optional[Callable[[FinetuneResult], None]] = None, negative=None) -> FinetuneResult:
    """Phase 2 on `sigmas`, then (rounds > 1) `rounds - 1` times: Phase 1 on the tuned model
    (`phase1(model, steps) -> sigmas`), Phase 2 on its schedule. Inputs are checked before any model call;
    `negative` is used only with settings.cfg != 1.
    `after_round(result so far)` is called after each round's Phase 2; its model and adapters are the
    live ones, trained further by the next round (a study scores round 1 without training it twice)."""
    check_unet(model)
    data = check_latents(latents)
    if not positive:
        raise FinetuneError("positive: the conditioning is empty; connect a text encoder output")
    check_negative(settings, negative)
    sig = check_schedule(model, sigmas)
    rounds = int(rounds)
    if rounds < 1:
        raise FinetuneError(f"rounds must be >= 1, got {rounds}")
    if rounds > 1 and phase1 is None:
        raise FinetuneError("rounds > 1 needs a Phase 1 optimiser to re-optimise the schedule between rounds")
    trainer = LoraTrainer(model, settings)
    total = settings.steps * rounds
    records = []
    for r in range(rounds):
        p1 = 0.0
        if r > 0:
            t0 = time.perf_counter()
            sig = check_schedule(trainer.model, phase1(trainer.model, sig.numel() - 1))
            p1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        done = r * settings.steps
        losses = trainer.train(data, positive, sig, negative=negative,
                               progress=None if progress is None else (lambda i, n, d=done: progress(d + i, total)))
        records.append(RoundRecord(r + 1, [float(v) for v in sig.tolist()], losses, time.perf_counter() - t0, p1,
                                   list(trainer.validation), trainer.best_step,
                                   trainer.teacher.seconds if trainer.teacher is not None else 0.0,
                                   trainer.student_seconds))
        if after_round is not None:
            after_round(FinetuneResult(trainer.model, trainer.lora_state(), list(records), settings,
                                       list(trainer._adapters)))
    return FinetuneResult(trainer.model, trainer.lora_state(), records, settings, list(trainer._adapters))

"""The per-call FreeU output-block patch, gated by the σ of each model evaluation.

ComfyUI calls an output_block_patch as patch(h, hsp, transformer_options) before every decoder
block of a UNet, with h the backbone features and hsp the skip features about to be concatenated;
transformer_options["sigmas"] holds the σ of the current evaluation. The patch decides from that
σ (not by counting calls), so 2nd-order samplers, restarts and split schedules gate correctly.
Outside the window it returns h and hsp untouched (bit-identical to no patch).

On GPUs with Triton the block runs through freeu.fused (one or two launches per block, σ compared on the
device, no host read); elsewhere through the torch route below, which reads σ on the host once per
call and gives the same result."""
from __future__ import annotations

import math

import torch

from . import fused
from .backbone import VERSIONS, scale_backbone
from .filter import fourier_filter
from .window import SLACK, SigmaWindow, check_sigma_batch

ALWAYS = SigmaWindow(high=math.inf, low=0.0)


class FreeUPatch:
    """FreeU for a UNet with base width `model_channels`: features with 4x that many channels get
    (b1, s1), with 2x (b2, s2). Decoder blocks with other widths are left alone."""

    def __init__(self, model_channels: int, b1: float, b2: float, s1: float, s2: float,
                 threshold: int = 1, version: str = "v1", window: SigmaWindow = ALWAYS,
                 filter_method: str = "auto"):
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
        if int(threshold) != threshold or threshold < 1:
            raise ValueError(f"threshold must be a whole number >= 1, got {threshold}")
        if int(model_channels) <= 0:
            raise ValueError(f"model_channels must be positive, got {model_channels}")
        for name, value in (("b1", b1), ("b2", b2), ("s1", s1), ("s2", s2)):
            if not math.isfinite(float(value)):
                raise ValueError(f"{name} must be finite, got {value}")
        mc = int(model_channels)
        self.stages = {4 * mc: (float(b1), float(s1)), 2 * mc: (float(b2), float(s2))}
        self.threshold = int(threshold)
        self.version = version
        self.window = window
        # The window as the kernel compares it (fp32, slack included), worked out once.
        self._device_bounds = fused.device_window(window.low * (1 - SLACK), window.high * (1 + SLACK))
        self.filter_method = filter_method  # see fourier_filter; "auto" except in benchmarks
        self._last = None  # (sigmas tensor, its version counter, decision) of the current call

    def __deepcopy__(self, memo):
        # ModelPatcher.clone() deep-copies model_options; the patch is immutable configuration
        # (its only state is a per-call cache keyed by tensor identity), so clones share it.
        return self

    def __repr__(self):
        return (f"FreeUPatch(stages={self.stages}, threshold={self.threshold}, version={self.version!r}, "
                f"window={self.window})")

    @torch.compiler.disable  # a host-side decision; compiled UNets take it as a graph break
    def gate(self, transformer_options: dict, batch: int):
        """True (all samples on), False (all off) or a bool mask over the batch."""
        if self.window.covers_everything:
            return True
        sigmas = transformer_options.get("sigmas")
        if sigmas is None:
            raise RuntimeError("FewStep FreeU has a σ window but ComfyUI passed no σ to the UNet "
                               "(transformer_options['sigmas'] is missing)")
        if not torch.is_tensor(sigmas):
            sigmas = torch.as_tensor(sigmas)
        # ComfyUI runs prompts under torch.inference_mode(), whose tensors have no version counter.
        version = None if sigmas.is_inference() else sigmas._version
        last = self._last
        if last is not None and last[0] is sigmas and last[1] == version:
            decision = last[2]
        else:
            # One small device-to-host read per model call; the other output blocks reuse it.
            flags = [self.window.contains(v) for v in sigmas.detach().reshape(-1).tolist()]
            if all(flags):
                decision = True
            elif not any(flags):
                decision = False
            else:
                decision = torch.tensor(flags, dtype=torch.bool)
            self._last = (sigmas, version, decision)
        if isinstance(decision, torch.Tensor):
            check_sigma_batch(batch, decision.numel())
            return decision.repeat(batch // decision.numel())
        return decision

    def apply(self, h: torch.Tensor, hsp: torch.Tensor, b: float, s: float):
        """FreeU on every sample: h scaled in place, a new filtered hsp."""
        scale_backbone(h, b, self.version)
        return h, fourier_filter(hsp, self.threshold, s, self.filter_method)

    @torch.compiler.disable  # host-side checks and a raw kernel launch: a graph break when compiled
    def _fused(self, h, hsp, b, s, transformer_options) -> bool:
        if self.filter_method != "auto" or not fused.usable(h, hsp, self.threshold):
            return False
        if self.window.covers_everything:
            sigmas = None
        else:
            sigmas = transformer_options.get("sigmas")
            if sigmas is None:
                return False  # the torch route raises the clear error
        return fused.freeu_block(h, hsp, b, s, self.threshold, self.version, sigmas, *self._device_bounds)

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict):
        stage = self.stages.get(int(h.shape[1]))
        if stage is None:
            return h, hsp
        if self._fused(h, hsp, *stage, transformer_options):
            return h, hsp
        on = self.gate(transformer_options, h.shape[0])
        if on is False:
            return h, hsp
        if on is True:
            return self.apply(h, hsp, *stage)
        idx = on.nonzero().reshape(-1).to(h.device)
        part_h, part_hsp = self.apply(h.index_select(0, idx), hsp.index_select(0, idx), *stage)
        h = h.index_copy(0, idx, part_h)
        hsp = hsp.index_copy(0, idx, part_hsp)
        return h, hsp

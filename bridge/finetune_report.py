"""What 'Few-Step Fine-tune (FewStep)' shows of a fine-tune (bridge/finetune.py): the text report
of its settings and rounds, and the loss curve as an IMAGE."""
from __future__ import annotations

import io as _io
import math

import torch


def report(result: FinetuneResult) -> str:
    s = result.settings
    lines = [f"Few-step fine-tune: {s.algorithm} rank {s.rank}, {s.optimizer} lr {s.learning_rate:g}, "
             f"({s.lr_schedule}), batch {s.batch_size}, {s.steps} steps x {len(result.rounds)} round(s), spread {s.spread:g}, "
             f"anchor {s.anchor:g}" + (f" ({s.anchor_target} target)" if s.anchor else "") + f", weighting {s.estimator} (schedule-derived, docs/finetune.md)"
             + (f", {s.holdout:g} of the " + ("teacher solves" if s.target == "trajectory" else "latents") + " held out"
                if s.holdout > 0 else "")]
    if s.target == "trajectory":
        lines.append(f"target: trajectory for {s.solver} ({s.trajectories} solves of the untuned model, {s.teacher_steps} "
                     f"teacher steps per step"
                     + (f"; guided at CFG {s.cfg:g}: sample the MODEL at that CFG with the same negative" if s.guided
                        else "; conditional, CFG 1")
                     + (f"; {s.on_policy:g} of the rows at the model's own states" if s.on_policy else "")
                     + "; docs/finetune.md)")
    for r in result.rounds:
        head = sum(r.losses[: max(1, len(r.losses) // 10)]) / max(1, len(r.losses[: max(1, len(r.losses) // 10)]))
        tail = r.losses[-max(1, len(r.losses) // 10):]
        lines.append(f"round {r.round}: sigmas [{', '.join(f'{v:.4g}' for v in r.sigmas)}]; loss {head:.4g} -> "
                     f"{sum(tail) / len(tail):.4g} (first/last 10%); {r.seconds:.1f} s"
                     + (f", Phase 1 {r.phase1_seconds:.1f} s" if r.round > 1 else "")
                     + (f", of which teacher {r.teacher_seconds:.1f} s" if r.teacher_seconds else "")
                     + (f", own solves {r.student_seconds:.1f} s" if r.student_seconds else ""))
        if r.held_out:
            best = dict(r.held_out)[r.best_step]
            lines.append(f"  held-out loss {r.held_out[0][1]:.4g} before the round, best {best:.4g} after step "
                         f"{r.best_step} of {len(r.losses)}" + (" (kept)" if r.best_step else " (the round's start kept: "
                                                                   "training did not lower it)"))
    lines.append(f"LoRA tensors: {len(result.lora)}")
    return "\n".join(lines)


def loss_curve_image(result: FinetuneResult, width: int = 640, height: int = 320) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: the per-step loss (log scale, moving average in blue), rounds separated,
    held-out checks as orange dots (the kept one ringed)."""
    from PIL import Image, ImageDraw
    values = [v for v in result.losses if math.isfinite(v) and v > 0]
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    margin = 36
    draw.rectangle([margin, 8, width - 8, height - margin], outline="black")
    if len(values) >= 2:
        logs = [math.log10(v) for v in values]
        win = max(1, len(logs) // 50)
        smooth = [sum(logs[max(0, i - win + 1): i + 1]) / len(logs[max(0, i - win + 1): i + 1]) for i in range(len(logs))]
        checks, at = [], 0  # (global step, log loss, kept)
        for r in result.rounds:
            checks += [(at + k, math.log10(v), k == r.best_step) for k, v in r.held_out if math.isfinite(v) and v > 0]
            at += len(r.losses)
        lo, hi = min(logs + [c[1] for c in checks]), max(logs + [c[1] for c in checks])
        hi = hi if hi > lo else lo + 1e-6
        px = lambda i: margin + (width - 8 - margin) * i / (len(logs) - 1)
        py = lambda v: height - margin - (height - margin - 8) * (v - lo) / (hi - lo)
        draw.line([(px(i), py(v)) for i, v in enumerate(logs)], fill=(190, 190, 190), width=1)
        draw.line([(px(i), py(v)) for i, v in enumerate(smooth)], fill=(30, 70, 200), width=2)
        at = 0
        for r in result.rounds[:-1]:
            at += len(r.losses)
            draw.line([(px(at), 8), (px(at), height - margin)], fill=(200, 60, 60), width=1)
        for step, v, kept in checks:
            x, y = px(min(step, len(logs) - 1)), py(v)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(235, 140, 20))
            if kept:
                draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=(0, 0, 0), width=2)
        draw.text((2, 8), f"{10 ** hi:.3g}", fill="black")
        draw.text((2, height - margin - 10), f"{10 ** lo:.3g}", fill="black")
    draw.text((margin, height - margin + 8), "step (log loss; red: new round's schedule; orange: held-out, ringed: kept)", fill="black")
    buf = _io.BytesIO()  # keeps PIL -> tensor conversion free of numpy dtype quirks
    img.save(buf, format="PNG")
    import numpy as np
    arr = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]

"""Published FreeU factors (b1, b2, s1, s2), with where each comes from.

The names are stable: saved workflows and API prompts store them."""
from __future__ import annotations

CUSTOM = "custom"

# name -> ((b1, b2, s1, s2), source)
PRESETS = {
    "SDXL (FreeU authors) 1.3/1.4/0.9/0.2": (
        (1.3, 1.4, 0.9, 0.2), "ChenyangSi/FreeU README, 'SDXL' (also ComfyUI's FreeU_V2 defaults)"),
    "SD1.5 (FreeU authors) 1.5/1.6/0.9/0.2": (
        (1.5, 1.6, 0.9, 0.2), "ChenyangSi/FreeU README, 'SD1.5'"),
    "SD2.1 (FreeU authors) 1.4/1.6/0.9/0.2": (
        (1.4, 1.6, 0.9, 0.2), "ChenyangSi/FreeU README, 'SD2.1'"),
    "F-scheduler paper 1.1/1.1/0.9/0.2": (
        (1.1, 1.1, 0.9, 0.2), "Li & Bai, arXiv 2510.02390 v3, Sec. 4.2"),
    "F-scheduler code 1.2/1.2/0.9/0.2": (
        (1.2, 1.2, 0.9, 0.2), "TheLovesOfLadyPurple/F-scheduler, the UniPC sampler of the v3 evaluation"),
}

NAMES = (CUSTOM, *PRESETS)


def resolve(preset: str, b1: float, b2: float, s1: float, s2: float) -> tuple[float, float, float, float]:
    """The factors to use: the preset's, or the given ones for "custom"."""
    if preset == CUSTOM:
        return float(b1), float(b2), float(s1), float(s2)
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {list(NAMES)}, got {preset!r}")
    return PRESETS[preset][0]

"""The mixture families the schedule optimiser and the lab benchmark are validated on (issue #18):
never used to choose a setting. Exact-denoiser Gaussian mixtures (samplers/exact.py) with data seeds
101, 102, ... (the lab's own sets use seed 0); latents SD1.5-like (4x64x64 scaled to 4x16x16) and
SDXL-like (4x128x128 scaled to 4x32x32: the same 4 channels and square aspect, 1/16 of the pixels,
for CPU time). Stdlib only, so any script can read it."""
from __future__ import annotations

SD15, SDXL = (4, 16, 16), (4, 32, 32)
# (dataset, components, spread, latent); family i (1-based) has data seed 100 + i
FAMILIES = (
    ("gmm", 4, 0.02, SD15), ("gmm", 16, 0.05, SDXL), ("gmm", 64, 0.1, SD15), ("gmm", 256, 0.2, SDXL),
    ("gmm", 1024, 0.5, SD15), ("gmm", 1024, 0.02, SDXL), ("shapes", 4, 0.5, SDXL), ("shapes", 16, 0.02, SD15),
    ("shapes", 64, 0.05, SDXL), ("shapes", 256, 0.1, SD15), ("shapes", 1024, 0.2, SDXL), ("shapes", 32, 0.3, SD15),
    # 13, 14 stand in for 6 and 11 (1024 components at the SDXL-like size: about 1 s per model call on
    # the shared CPU, too slow for the study's budget); chosen for their cost, before any result of theirs.
    ("gmm", 1024, 0.02, SD15), ("shapes", 128, 0.2, SDXL),
)


def family_name(number: int) -> str:
    dataset, k, spread, shape = FAMILIES[number - 1]
    return f"{dataset} K={k} s={spread:g} {'SDXL' if shape == SDXL else 'SD1.5'}"


def data_seed(number: int, base: int = 100) -> int:
    """Family `number`'s data seed; another `base` draws fresh mixtures of the same kinds (a second
    validation set for a rule changed after seeing the first)."""
    return base + number

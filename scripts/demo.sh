#!/usr/bin/env bash
# The main job: a headless ComfyUI with FewStep runs the example workflows on the embedded
# exact-denoiser model and writes images and a comparison plot to a folder (default ./out).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$(bash "$ROOT/scripts/host.sh")"
export COMFYUI_PATH FEWSTEP_PYTHON
# The repo root on the path (packages imported by name: tests.support, samplers), and not the caller's
# folder, which `python -m` would put first (from ComfyUI's folder its own `tests` would win).
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$FEWSTEP_PYTHON" "$ROOT/scripts/demo.py" "$@"

#!/usr/bin/env bash
# Packs what a bare GPU machine lacks for the benchmarks into .gpu/ (git-ignored): the host's
# ComfyUI tree (code only, no tokenizer data or tests) and wheels of ComfyUI requirements that the
# GPU image does not carry. On the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl
#   PYTHONPATH=/tmp/site COMFYUI_PATH=$PWD/.gpu/ComfyUI python3 -m bench.bench_...   # from the repo root
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$(bash "$ROOT/scripts/host.sh")"
OUT=$ROOT/.gpu
rm -rf "$OUT" && mkdir -p "$OUT/wheels"
tar -C "$(dirname "$COMFYUI_PATH")" -cf - \
  --exclude='__pycache__' --exclude='./ComfyUI/tests' --exclude='./ComfyUI/tests-unit' \
  --exclude='./ComfyUI/comfy_api_nodes/*' --exclude='*.json' --exclude='*.txt' --exclude='*.model' \
  --exclude='*.gz' --exclude='*.tiktoken' --exclude='./ComfyUI/output' --exclude='./ComfyUI/input' \
  ./ComfyUI | tar -C "$OUT" -xf -
# comfy_api_nodes is imported lazily by ComfyUI's node loader only; keep the package importable.
mkdir -p "$OUT/ComfyUI/comfy_api_nodes" && touch "$OUT/ComfyUI/comfy_api_nodes/__init__.py"
cp "$COMFYUI_PATH/requirements.txt" "$OUT/ComfyUI/"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$OUT/wheels" torchsde==0.2.6 trampoline==0.1.2 av==19.0.2 pydantic-settings==2.7.1 python-dotenv==1.0.1 \
  2> >(grep -v "^WARNING: Location" >&2)
# Both packed as well: ComfyUI.tgz (0.8 MB, not 5) and site.tar.xz, the wheels unpacked as pip --target
# would lay them out (25 MB, not 35). Carried instead of ComfyUI/ and wheels/, they leave room for two
# pretrained bases under the device tool's 64 MiB; bench/run_finetune_round.sh unpacks them.
tar czf "$OUT/ComfyUI.tgz" -C "$OUT" ComfyUI
site=$(mktemp -d) && for w in "$OUT"/wheels/*.whl; do python3 -m zipfile -e "$w" "$site"; done
tar cf - -C "$site" . | xz -6 > "$OUT/site.tar.xz" && rm -rf "$site"
du -sh "$OUT"/* >&2

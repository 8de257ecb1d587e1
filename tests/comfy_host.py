"""Test access to the real ComfyUI host: in-process (scripts/comfy_inprocess.py) and as a headless
server (scripts/comfy_server.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from comfy_inprocess import load_inprocess  # noqa: E402,F401
from comfy_server import PACK_DIR_NAME, ComfyServer, comfy_path, make_base_directory  # noqa: E402,F401

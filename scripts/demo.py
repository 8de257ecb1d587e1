"""Main job: boot a headless ComfyUI with the pack, run the lab workflow over HTTP, save results."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_server import REPO, ComfyServer  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(REPO / "out"), help="folder for images and plots (default ./out)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="fewstep-demo-") as tmp:
        server = ComfyServer(Path(tmp))
        print(f"[demo] starting headless ComfyUI on {server.url} ...", flush=True)
        try:
            server.start()
            prompt = json.loads((REPO / "example_workflows" / "lab_ksampler_api.json").read_text())
            print("[demo] running example_workflows/lab_ksampler_api.json on the exact-denoiser lab model", flush=True)
            entry = server.run_prompt(prompt)
            written = []
            for node_out in entry["outputs"].values():
                for im in node_out.get("images", []):
                    src = server.base / "output" / im.get("subfolder", "") / im["filename"]
                    shutil.copy(src, out / im["filename"])
                    written.append(out / im["filename"])
        finally:
            server.stop()
    for p in written:
        print(f"[demo] wrote {p}")
    print(f"[demo] done in {time.time() - t0:.1f} s; results in {out}")


if __name__ == "__main__":
    main()

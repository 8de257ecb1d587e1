"""The Phase 2 ground-truth study (bench/study_finetune_gmm.py) as a command: a base model saved by
one run with --base-dir is the model the next run studies, so a long pretraining can be done once
(one device session) and studied later."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _study(tmp_path, out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bench.study_finetune_gmm", "--tiny", "--controls-only", "--families", "gmm8-s0.1",
           "--base-dir", str(tmp_path / "bases"), "--out", str(tmp_path / out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / out / "study_finetune_gmm.json").read_text())["families"]["gmm8-s0.1"]


def test_a_saved_base_model_is_loaded_by_the_next_run_and_studied_unchanged(tmp_path):
    first = _study(tmp_path, "a")
    assert first["base_saved"].startswith("gmm8-s0.1-w32-r1-s4-p20-") and first["pretrain_s"] > 0
    second = _study(tmp_path, "b")
    assert second["base_loaded"] == first["base_saved"] and second["pretrain_s"] == 0.0
    # the same network and the same sampling noise: the same scores, to the bit (CPU)
    assert second["base_ref"] == first["base_ref"]
    assert second["uniform_ref"] == first["uniform_ref"]
    # other pretraining settings are another model: pretrained again, not loaded
    third = _study(tmp_path, "c", "--pretrain-steps", "21")
    assert "base_loaded" not in third and third["base_saved"].startswith("gmm8-s0.1-w32-r1-s4-p21-")

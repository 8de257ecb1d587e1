"""The study's check of a trajectory LoRA against its teacher (bench/finetune_diagnostics.py), on a
tiny UNet inside the real ComfyUI (CPU): the measurements must read zero where the teacher is the
student's own solve, and tell a model that moved from one that did not."""
import importlib

import pytest
import torch

from bench.finetune_diagnostics import summary, trajectory_diagnostics
from tests.support.tiny_unet import empty_conditioning, tiny_unet

SHAPE = (4, 8, 8)


@pytest.fixture(scope="module")
def env(comfy):
    nodes, pack = comfy
    model = tiny_unet(seed=0)
    sigma_min = float(model.get_model_object("model_sampling").sigma_min)
    return pack.__name__, model, empty_conditioning(), sigma_min


def _diag(env, tuned, sigmas, teacher_steps, solver="dpmpp_2m", count=6):
    pack, base, cond, _ = env
    scored = []
    out = trajectory_diagnostics(pack, base, tuned, sigmas, cond, SHAPE, count, teacher_steps, solver, seed=5,
                                 score=lambda x: scored.append(x.clone()) or {"fd_inf": float(x.double().pow(2).mean())})
    return out, scored[0]


def test_a_teacher_that_is_the_solve_itself_leaves_no_loss_and_no_gap(env, one_thread):
    # teacher_steps=1 on a schedule whose last level is the model's sigma_min: the fine grid is the
    # schedule itself, so the teacher's (DPM++ 2M) solve is the model's own N-step dpmpp_2m solve and
    # D* its own outputs
    _, base, _, sigma_min = env
    sig = torch.tensor([14.6146, 3.0, 0.7, sigma_min, 0.0], dtype=torch.float64)
    out, ends = _diag(env, base, sig, teacher_steps=1)
    assert len(out["step_loss"]["untuned"]) == 4 and len(out["weights"]) == 4
    assert max(out["step_loss"]["untuned"]) < 1e-9, out["step_loss"]
    assert out["gap_rms"]["untuned"] < 1e-4
    assert out["step_loss"]["tuned"] == out["step_loss"]["untuned"]  # the same model measured twice
    assert ends.shape == (6,) + SHAPE and out["teacher"]["fd_inf"] == pytest.approx(float(ends.double().pow(2).mean()))


def test_an_euler_student_of_the_same_teacher_is_off_only_where_euler_and_dpmpp_2m_differ(env, one_thread):
    # the first step and the final jump to 0 are the same update for both solvers; the others are not
    _, base, _, sigma_min = env
    sig = torch.tensor([14.6146, 3.0, 0.7, sigma_min, 0.0], dtype=torch.float64)
    out, _ = _diag(env, base, sig, teacher_steps=1, solver="euler")
    first, *middle, last = out["step_loss"]["untuned"]
    assert first < 1e-9 and last < 1e-9 and min(middle) > 1e-3, out["step_loss"]
    assert out["gap_rms"]["untuned"] > 1e-3


def test_a_finer_teacher_has_a_gap_and_another_model_is_measured_apart(env, one_thread):
    pack, base, cond, sigma_min = env
    sig = torch.tensor([14.6146, 3.0, 0.7, sigma_min, 0.0], dtype=torch.float64)
    out, _ = _diag(env, base, sig, teacher_steps=4)
    assert out["gap_rms"]["untuned"] > 1e-3 and min(out["step_loss"]["untuned"][:-1]) > 0
    other = tiny_unet(seed=1)
    moved, _ = _diag(env, other, sig, teacher_steps=4)
    assert moved["step_loss"]["untuned"] == out["step_loss"]["untuned"]  # the teacher is always the base model
    assert moved["step_loss"]["tuned"] != out["step_loss"]["tuned"] and moved["gap_rms"]["tuned"] != out["gap_rms"]["tuned"]
    line = summary(out)
    assert "teacher FD_inf" in line and "gap" in line


def test_a_schedule_that_does_not_end_at_zero_is_refused(env, one_thread):
    _, base, _, _ = env
    with pytest.raises(ValueError, match="sigmas: .*ends at 0"):
        _diag(env, base, torch.tensor([14.6146, 3.0, 0.7]), teacher_steps=2)

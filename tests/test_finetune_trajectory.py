"""Phase 2's trajectory target (samplers/finetune_trajectory.py): the fine grid, the teacher solve,
and the step targets that make a few-step solver land on the teacher's states, checked against an
independent step-by-step solve with the lab's exact denoiser."""
import math

import pytest
import torch

from samplers.exact import ExactDenoiser, MixtureSpec
from samplers.finetune_trajectory import (TARGET_SOLVERS, run_student, run_teacher, step_gains, step_targets,
                                         student_targets, teacher_sigmas)

pytestmark = pytest.mark.host_independent

SCHED = torch.tensor([14.6146, 6.0, 2.5, 0.9, 0.25, 0.0], dtype=torch.float64)
DENOISER = ExactDenoiser(MixtureSpec("gmm", 4, 0.3, 0))


def _solve(sigmas, x, outputs, solver):
    """The few-step solve as ComfyUI's sample_euler / sample_dpmpp_2m write it (in sigma / log-sigma
    form, not through our gains), the model's output at step i being outputs(i, x)."""
    old = None
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        d = outputs(i, x)
        if solver == "euler":
            x = x + (t - s) * (x - d) / s
        elif old is None or t == 0:
            x = (t / s) * x - math.expm1(-(math.log(s) - math.log(t))) * d if t > 0 else d
        else:
            h, h_last = math.log(s / t), math.log(sigmas[i - 1] / s)
            r = h_last / h
            x = (t / s) * x - math.expm1(-h) * ((1 + 1 / (2 * r)) * d - (1 / (2 * r)) * old)
        old = d
    return x


def test_fine_grid_holds_every_step_of_the_schedule_and_refines_the_final_jump():
    fine, keep = teacher_sigmas(SCHED, 4, 0.03)
    assert torch.equal(fine[keep], SCHED)
    assert (fine[1:] < fine[:-1]).all() and fine[-1] == 0 and fine[-2] == pytest.approx(0.03)
    assert fine.numel() == 5 * 4 + 1 + 1  # 4 sub-steps per interval, and the jump to 0 after sigma_min
    logs = fine[keep[1]:keep[2] + 1].log()
    assert torch.allclose(logs[1:] - logs[:-1], (logs[1] - logs[0]).expand(4), atol=1e-12)
    # a schedule that ends above 0 has no jump; a last called level at sigma_min is not refined
    fine, keep = teacher_sigmas(torch.tensor([5.0, 1.0]), 3, 0.03)
    assert fine.numel() == 4 and keep == [0, 3]
    fine, keep = teacher_sigmas(torch.tensor([5.0, 0.03, 0.0]), 2, 0.03)
    assert fine.tolist()[-2:] == [pytest.approx(0.03), 0.0] and keep == [0, 2, 3]
    # ... nor one that is sigma_min rounded to float32 (Karras' last level is, a few 1e-8 above the
    # model's float64 sigma_min): no steps of log-size 1e-7
    fine, keep = teacher_sigmas(torch.tensor([5.0, 0.029167177155613892, 0.0], dtype=torch.float64), 2, 0.029167158529162407)
    assert fine.numel() == 4 and keep == [0, 2, 3]


@pytest.mark.parametrize("bad, match", [(dict(sigmas=[1.0]), "at least 2"), (dict(sigmas=[1.0, 2.0, 0.0]), "decreasing"),
                                        (dict(sub_steps=0), "teacher_steps"), (dict(sigma_min=0.0), "sigma_min"),
                                        (dict(sigmas=[1.0, 0.0, 0.0]), "called ones > 0")])
def test_fine_grid_refuses_bad_input_by_name(bad, match):
    args = dict(sigmas=SCHED, sub_steps=2, sigma_min=0.03)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        teacher_sigmas(torch.as_tensor(args["sigmas"], dtype=torch.float64), args["sub_steps"], args["sigma_min"])


def test_teacher_is_dpmpp_2m_on_the_fine_grid_and_keeps_its_states():
    gen = torch.Generator().manual_seed(0)
    x = 14.6146 * torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64)
    fine, keep = teacher_sigmas(SCHED, 3, 0.03)
    states = run_teacher(DENOISER, x, fine, keep)
    assert states.shape == (SCHED.numel(), 6, 2, 3, 3) and torch.equal(states[0], x)
    for n, k in enumerate(keep[1:], 1):  # each kept state is the solve stopped there
        ref = _solve(fine[:k + 1].tolist(), x, lambda i, xx: DENOISER(xx, fine[i]), "dpmpp_2m")
        assert torch.allclose(states[n], ref, atol=1e-10)


def _teacher_solve(seed):
    """(5 starting latents at SCHED's first level, the teacher's states at SCHED's levels, 8 steps per step)."""
    x = 14.6146 * torch.randn(5, 2, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    fine, keep = teacher_sigmas(SCHED, 8, 0.03)
    return x, run_teacher(DENOISER, x, fine, keep)


@pytest.mark.parametrize("solver", TARGET_SOLVERS)
def test_step_targets_make_the_few_step_solver_land_on_every_teacher_state(solver):
    # The student's outputs at the teacher's states are the targets: its few-step solve (teacher
    # forced or not, as they agree) reproduces the teacher's states, the final sample included.
    x, states = _teacher_solve(seed=1)
    targets, weights = step_targets(states, SCHED, solver)
    assert targets.shape == (SCHED.numel() - 1,) + tuple(x.shape)
    seen = []

    def student(i, xx):
        seen.append(float((xx - states[i]).abs().max()))
        return targets[i]

    out = _solve(SCHED.tolist(), x, student, solver)
    assert max(seen) < 1e-9 and torch.allclose(out, states[-1], atol=1e-9)
    # the final jump's target is the teacher's sample itself; a few-step solve with the true
    # denoiser does not land there (the targets correct the solver, they are not the denoiser)
    assert torch.allclose(targets[-1], states[-1], atol=1e-12)
    plain = _solve(SCHED.tolist(), x, lambda i, xx: DENOISER(xx, SCHED[i]), solver)
    assert float((plain - states[-1]).abs().max()) > 1e-3
    assert weights.mean() == pytest.approx(1.0) and (weights > 0).all()


def test_step_weights_are_the_state_error_per_unit_of_output_error():
    # Perturbing D_i by d (later outputs fixed) moves x_{i+1} by (1 - r_i) g_i d: weight ∝ its square.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, 1, 1, generator=gen, dtype=torch.float64)
    outs = [torch.randn(1, 1, 1, 1, generator=gen, dtype=torch.float64) for _ in range(SCHED.numel() - 1)]
    for solver in TARGET_SOLVERS:
        _, weights = step_targets(torch.zeros(SCHED.numel(), 1, 1, 1, 1, dtype=torch.float64), SCHED, solver)
        moved = []
        for i in range(len(outs)):
            base = _solve(SCHED[:i + 2].tolist(), x, lambda k, xx: outs[k], solver)
            bumped = _solve(SCHED[:i + 2].tolist(), x, lambda k, xx: outs[k] + (1.0 if k == i else 0.0), solver)
            moved.append(float(bumped - base) ** 2)
        moved = torch.tensor(moved, dtype=torch.float64)
        assert torch.allclose(weights, moved / moved.mean(), rtol=1e-9), solver
    r, c = step_gains(SCHED, "dpmpp_2m")
    assert c[0] == 0 and c[-1] == 0 and (c[1:-1] > 0).all()  # first step and final jump are first order


def test_bad_solver_and_state_count_are_named():
    with pytest.raises(ValueError, match="solver"):
        step_targets(torch.zeros(6, 1, 1), SCHED, "heun")
    with pytest.raises(ValueError, match="states: expected 6"):
        step_targets(torch.zeros(5, 1, 1), SCHED, "euler")



@pytest.mark.parametrize("solver", TARGET_SOLVERS)
def test_student_solve_is_comfyuis_update_and_keeps_its_states_and_outputs(solver):
    gen = torch.Generator().manual_seed(3)
    x = 14.6146 * torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
    states, outputs = run_student(lambda xx, s: DENOISER(xx, s), x, SCHED, solver)
    assert states.shape == outputs.shape == (SCHED.numel() - 1,) + tuple(x.shape) and torch.equal(states[0], x)
    for i in range(1, SCHED.numel() - 1):  # each state is the independent solve stopped there
        assert torch.allclose(states[i], _solve(SCHED[:i + 1].tolist(), x, lambda k, xx: DENOISER(xx, SCHED[k]), solver),
                              atol=1e-10)
        assert torch.allclose(outputs[i], DENOISER(states[i], SCHED[i]), atol=1e-12)


@pytest.mark.parametrize("solver", TARGET_SOLVERS)
def test_student_targets_land_each_step_of_the_students_own_solve_on_the_teachers_next_state(solver):
    x, teacher = _teacher_solve(seed=4)
    # a student that is the plain denoiser drifts from the teacher; at its own states the targets are
    # the outputs that, with its own previous output in the update, put the next state on the teacher's
    states, outputs = run_student(lambda xx, s: DENOISER(xx, s), x, SCHED, solver)
    targets = student_targets(states, outputs, teacher, SCHED, solver)
    assert float((states[1:] - teacher[1:-1]).abs().max()) > 1e-3  # it does drift
    for i in range(SCHED.numel() - 1):
        history = [outputs[k] for k in range(i)] + [targets[i]]
        landed = _solve(SCHED[:i + 2].tolist(), x, lambda k, xx: history[k], solver)
        # the solve above starts at x and replays the student's outputs, so it passes through its states
        assert torch.allclose(landed, teacher[i + 1], atol=1e-9), i
    # where the student follows the teacher (its states and outputs the teacher-forced ones), the
    # targets are the teacher-forced targets
    forced, _ = step_targets(teacher, SCHED, solver)
    assert torch.allclose(student_targets(teacher[:-1], forced, teacher, SCHED, solver), forced, atol=1e-12)
    with pytest.raises(ValueError, match="teacher states"):
        student_targets(states, outputs, teacher[:-1], SCHED, solver)

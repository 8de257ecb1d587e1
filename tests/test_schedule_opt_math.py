"""Schedule optimisation maths (samplers/schedule_opt/): DP optimality against brute force, the
Gram-form costs against explicit residuals, the propagation of jump errors to the final sample
(issue #18's degenerate final jumps), the guard against Karras, the planned model calls, the
first-order convex-combination identity, the teacher's convergence order, refinement and bad input.
Pure torch, no ComfyUI."""
import itertools
import math

import pytest
import torch

from samplers import schedule_opt as so
from samplers.exact import ExactDenoiser, MixtureSpec

pytestmark = pytest.mark.host_independent  # imports no ComfyUI: one leg of scripts/test.sh runs it

SMAX, SMIN = 14.6146, 0.0292


def _den(dataset="gmm", k=6, spread=0.3):
    return ExactDenoiser(MixtureSpec(dataset, k, spread, 0))


def _start(m, seed=0, shape=(4, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((m,) + shape, generator=g, dtype=torch.float64) * math.sqrt(1 + SMAX ** 2)


def _teacher(grid_size=9, m=3, substeps=2, dataset="gmm"):
    return so.teacher_pass(_den(dataset), _start(m), so.log_grid(SMAX, SMIN, grid_size), substeps)


def _brute_force(costs, steps, gamma=1.0):
    G = costs.sigmas.numel()
    best, arg = math.inf, None
    for rest in itertools.combinations(range(1, G), steps - 1):
        path = [0, *rest]
        c = so.path_cost(costs, path, gamma)
        if c < best:
            best, arg = c, path
    return best, arg


def _run(rule_name, den, x, sigmas):
    """A sampler written directly from the rule (independent of the Gram cost code)."""
    rule = so.JUMP_RULES[rule_name]
    d_prev = s_prev = None
    ones = x.new_ones(x.shape[0])
    for i in range(len(sigmas) - 1):
        d = den(x, float(sigmas[i]) * ones)
        x = so.apply_rule(rule, x, d, d_prev, s_prev, float(sigmas[i]), float(sigmas[i + 1]))
        d_prev, s_prev = d, float(sigmas[i])
    return x


# ---------------------------------------------------------------------------------------------
# DP optimality

@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
@pytest.mark.parametrize("kind", ["jump", "bound"])
def test_dp_matches_brute_force_on_teacher_costs(sampler, kind):
    costs = so.jump_costs(_teacher(), sampler, kind, power=1.0)
    res = so.optimal_paths(costs, 7)
    for steps in range(1, 8):
        best, _ = _brute_force(costs, steps)
        assert res.values[steps] == pytest.approx(best, rel=1e-12, abs=1e-15), steps
        assert so.path_cost(costs, res.paths[steps]) == pytest.approx(best, rel=1e-12, abs=1e-15)
        sched = res.schedule(steps)
        assert sched.numel() == steps + 1 and float(sched[-1]) == 0 and float(sched[0]) == pytest.approx(SMAX)
        assert (sched[1:] < sched[:-1]).all()


@pytest.mark.parametrize("memory", [0, 1])
@pytest.mark.parametrize("gamma", [1.0, 0.8, 1.2])
def test_dp_matches_brute_force_on_random_costs(memory, gamma):
    """Random positive costs (no structure to lean on), with the cost-to-go weight gamma."""
    G = 8
    g = torch.Generator().manual_seed(3 + memory)
    sig = so.log_grid(SMAX, SMIN, G)
    later = torch.triu(torch.ones(G, G, dtype=torch.bool), 1)
    pair = torch.where(later, torch.rand(G, G, generator=g, dtype=torch.float64), torch.tensor(math.inf, dtype=torch.float64))
    triple = None
    if memory:
        triple = torch.rand(G, G, G, generator=g, dtype=torch.float64)
        idx = torch.arange(G)
        valid = (idx.view(-1, 1, 1) < idx.view(1, -1, 1)) & (idx.view(1, -1, 1) < idx.view(1, 1, -1))
        triple = torch.where(valid, triple, torch.tensor(math.inf, dtype=torch.float64))
    costs = so.JumpCosts(sig, pair, torch.rand(G, generator=g, dtype=torch.float64), triple)
    res = so.optimal_paths(costs, G, gamma=gamma)
    for steps in range(1, G + 1):
        best, arg = _brute_force(costs, steps, gamma)
        assert res.values[steps] == pytest.approx(best, rel=1e-12)
        assert so.path_cost(costs, res.paths[steps], gamma) == pytest.approx(best, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Costs

def _residual_costs(teacher, sampler, power):
    """The same costs computed the slow way: apply the rule to the stored tensors."""
    s = teacher.sigmas
    G = s.numel()
    ref = teacher.final.flatten(1).norm(dim=1)
    rule = so.rule_for(sampler)

    def cost(x_hat, k):
        return float(((x_hat - teacher.states[k]).flatten(1).norm(dim=1) / ref).pow(power).mean())

    pair = torch.full((G, G), math.inf, dtype=torch.float64)
    triple = torch.full((G, G, G), math.inf, dtype=torch.float64)
    for j in range(G):
        for k in range(j + 1, G):
            x = so.apply_rule(rule, teacher.states[j], teacher.denoised[j], None, None, float(s[j]), float(s[k]))
            pair[j, k] = cost(x, k)
            for p in range(j):
                x = so.apply_rule(rule, teacher.states[j], teacher.denoised[j], teacher.denoised[p],
                                  float(s[p]), float(s[j]), float(s[k]))
                triple[p, j, k] = cost(x, k)
    term = ((teacher.denoised - teacher.final).flatten(2).norm(dim=2) / ref).pow(power).mean(1)
    return pair, triple, term


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_gram_costs_equal_explicit_residuals(sampler, power):
    teacher = _teacher(grid_size=7, m=2)
    costs = so.jump_costs(teacher, sampler, "jump", power, "none")
    pair, triple, term = _residual_costs(teacher, sampler, power)
    assert torch.allclose(costs.pair, pair, rtol=1e-7, atol=1e-10)
    assert torch.allclose(costs.terminal, term, rtol=1e-7, atol=1e-10)
    if sampler == "euler":
        assert costs.triple is None
    else:
        fin = torch.isfinite(triple)
        assert torch.equal(torch.isfinite(costs.triple), fin)
        assert torch.allclose(costs.triple[fin], triple[fin], rtol=1e-7, atol=1e-10)


def test_propagated_costs_are_the_residuals_times_the_per_sample_factor():
    teacher = _teacher(grid_size=7, m=3)
    p = so.local_propagation(teacher.sigmas, *so.gram_matrices(teacher))
    assert p.shape == (3, 7) and ((p > 0) & (p <= 1)).all()
    s, ref = teacher.sigmas, teacher.final.flatten(1).norm(dim=1)
    costs = so.jump_costs(teacher, "dpmpp_2m", "jump", 2.0, "local")
    rule = so.rule_for("dpmpp_2m")
    for p_, j, k in [(0, 1, 2), (1, 3, 6), (2, 4, 5)]:
        x = so.apply_rule(rule, teacher.states[j], teacher.denoised[j], teacher.denoised[p_], float(s[p_]),
                          float(s[j]), float(s[k]))
        want = ((x - teacher.states[k]).flatten(1).norm(dim=1) / ref * p[:, k]).pow(2).mean()
        assert float(costs.triple[p_, j, k]) == pytest.approx(float(want), rel=1e-7)


def _gaussian(spread=0.3):
    return ExactDenoiser(MixtureSpec("gmm", 1, spread, 0))


def test_local_propagation_recovers_the_flow_contraction_of_gaussian_data():
    """One Gaussian N(mu, a I): a state error at s_k reaches the output scaled by a/sqrt((a+m)(a+s_k^2))."""
    a, m = 0.3 ** 2, SMIN ** 2
    teacher = so.teacher_pass(_gaussian(), _start(4), so.log_grid(SMAX, SMIN, 40), 4)
    p = so.local_propagation(teacher.sigmas, *so.gram_matrices(teacher))
    want = a / torch.sqrt((a + m) * (a + teacher.sigmas ** 2))
    assert torch.allclose(p, want.expand_as(p), rtol=0.03), (p[0], want)


def test_propagated_cost_equals_the_jump_s_effect_on_the_final_sample():
    """For Gaussian data the flow is linear and isotropic: the cost of a teacher-forced jump is the error
    the teacher's own continuation from the landing state makes in its output."""
    den, x = _gaussian(), _start(3)
    grid = so.log_grid(SMAX, SMIN, 30)
    teacher = so.teacher_pass(den, x, grid, 4)
    costs = so.jump_costs(teacher, "euler", "jump", 1.0, "local")
    ref = teacher.final.flatten(1).norm(dim=1)
    for j, k in [(0, 6), (3, 15), (10, 24)]:
        x_hat = so.apply_rule(so.rule_for("euler"), teacher.states[j], teacher.denoised[j], None, None,
                              float(grid[j]), float(grid[k]))
        tail = grid[k:]
        out = so.teacher_pass(den, x_hat, tail, 4).final if tail.numel() > 1 else den(x_hat, float(tail[0]))
        true = float(((out - teacher.final).flatten(1).norm(dim=1) / ref).mean())
        assert float(costs.pair[j, k]) == pytest.approx(true, rel=0.03), (j, k)


@pytest.mark.parametrize("dataset,spread", [("gmm", 0.02), ("shapes", 0.05)])
def test_propagated_costs_end_without_a_long_final_jump(dataset, spread):
    """Issue #18: unpropagated costs price state errors far from the data in state units, so the DP
    climbs down slowly at high noise and jumps to 0 from sigma > 1; priced as final-sample errors the
    path reaches the bottom of the range before its last jump (no floor on step sizes involved)."""
    den = ExactDenoiser(MixtureSpec(dataset, 16, spread, 0))
    g = torch.Generator().manual_seed(0)
    x = torch.randn((24, 4, 8, 8), generator=g, dtype=torch.float64) * math.sqrt(1 + SMAX ** 2)
    teacher = so.teacher_pass(den, x, so.log_grid(SMAX, SMIN, 60), 2)
    last = {prop: float(so.optimal_paths(so.jump_costs(teacher, "dpmpp_2m", "jump", 1.0, prop), 5).schedule(5)[-2])
            for prop in ("none", "local")}
    assert last["none"] > 1.0 and last["local"] < 0.1, last


def test_significant_win_needs_a_consistent_paired_gain():
    base = torch.tensor([0.010, 0.020, 0.015, 0.030, 0.012, 0.018, 0.022, 0.011], dtype=torch.float64)
    assert so.significant_win(base * 0.8, base)[0]
    # Four noises with a tight, large gain are not enough (issue 18): the sign test needs >= 5.
    assert not so.significant_win(base[:4] * 0.6, base[:4])[0] and so.significant_win(base[:5] * 0.6, base[:5])[0]
    assert so.sign_test_p(torch.tensor([1.0, 1, 1, 1])) == 1 / 16
    assert so.sign_test_p(torch.tensor([1.0] * 7 + [-1.0])) == pytest.approx(9 / 256)
    # 7 of 8 gains pass, 6 of 8 do not, however large the mean.
    assert so.significant_win(base * torch.tensor([1.01] + [0.3] * 7, dtype=torch.float64), base)[0]
    six = torch.tensor([1.01, 1.01] + [0.3] * 6, dtype=torch.float64)
    assert not so.significant_win(base * six, base)[0]
    assert not so.significant_win(base, base)[0]
    mixed = base * torch.tensor([0.5, 2.0, 0.5, 2.0, 0.5, 2.0, 0.5, 1.9], dtype=torch.float64)
    assert not so.significant_win(mixed, base)[0]
    assert not so.significant_win(base[:1] * 0.5, base[:1])[0]  # one sample proves nothing


def test_karras_is_kept_unless_a_candidate_beats_it_significantly():
    den = _den("gmm", 16, 0.3)
    run = lambda x, s: _run("dpmpp_2m", den, x, s)  # noqa: E731
    x = _start(16, seed=6)
    karras = so.optimise_schedule(den, x, SMAX, SMIN, 5, "dpmpp_2m", run_sampler=run, grid_size=30, holdout=8)
    bad = torch.tensor([SMAX, 14.0, 13.5, 13.0, 12.5, 0.0], dtype=torch.float64)  # a poor baseline to protect
    res = so.optimise_schedule(den, x, SMAX, SMIN, 5, "dpmpp_2m", run_sampler=run, grid_size=30, holdout=8,
                               baselines={"karras": bad})
    assert res.chosen != "karras" and res.guard["kept"] and res.guard["on"] == "held-out"
    # A baseline equal to the best candidate: no gain at all, so the baseline stays.
    same = so.optimise_schedule(den, x, SMAX, SMIN, 5, "dpmpp_2m", run_sampler=run, grid_size=30, holdout=8,
                                baselines={"karras": karras.dp[karras.chosen].schedule(5)})
    assert same.chosen == "karras" and same.guard["candidate"] == karras.chosen and not same.guard["kept"]
    # Without held-out noises half the fitting noises are kept out of the DP and the ranking and only
    # test the guard (issue 18), run in the same batch: no extra model calls.
    fit = so.optimise_schedule(den, x, SMAX, SMIN, 5, "dpmpp_2m", run_sampler=run, grid_size=30,
                               baselines={"karras": bad})
    assert fit.guard["on"] == "guard split" and fit.chosen != "karras" and fit.guard["kept"]
    assert fit.sampler_calls == 5 * (len(so.DEFAULT_VARIANTS) + 1)
    first_half = so.optimise_schedule(den, x[:8], SMAX, SMIN, 5, "dpmpp_2m", run_sampler=run, grid_size=30,
                                      baselines={"karras": bad}, guard=None)
    assert all(torch.equal(fit.dp[k].schedule(5), first_half.dp[k].schedule(5)) for k in fit.dp)
    assert fit.train_errors == first_half.train_errors
    assert so.guard_split(16, 0, True) == 8 and so.guard_split(5, 1, True) == 2 and so.guard_split(16, 2, True) == 0
    # Fewer than 4 noises: nothing to split, the (optimistic) test on the fitting noises says so.
    few = so.optimise_schedule(den, x[:3], SMAX, SMIN, 5, "dpmpp_2m", run_sampler=run, grid_size=30,
                               baselines={"karras": bad})
    assert few.guard["on"] == "fitting"


@pytest.mark.parametrize("holdout,sweeps", [(0, 0), (4, 0), (4, 2)])
def test_planned_calls_are_the_calls_made(holdout, sweeps):
    den = _den("gmm", 8, 0.3)
    run = lambda x, s: _run("dpmpp_2m", den, x, s)  # noqa: E731
    made = []
    counting = lambda x, s: made.append(s.numel() - 1) or run(x, s)  # noqa: E731
    kw = dict(run_sampler=counting, grid_size=20, substeps=2, holdout=holdout, refine_sweeps=sweeps,
              refine_candidates=3, refine_search="golden", refine_starts=2,
              baselines={"karras": torch.tensor([SMAX, 2.0, 0.3, 0.0], dtype=torch.float64)})
    res = so.optimise_schedule(den, _start(10, seed=2), SMAX, SMIN, 3, "dpmpp_2m", **kw)
    plan = so.planned_calls(3, 20, 2, len(so.DEFAULT_VARIANTS) + 1, holdout, sweeps, 3, "golden", refine_starts=2)
    assert res.planned == plan and res.teacher_calls == plan.teacher == 19 * 2 + 1
    assert res.sampler_calls == sum(made)
    if sweeps:
        assert plan.selection < res.sampler_calls <= plan.selection + plan.refinement
    else:
        assert res.sampler_calls == plan.selection and plan.refinement == 0
    assert str(plan.total) in plan.describe()


def test_euler_jump_error_is_the_riemann_sum_and_below_the_bound():
    """For a teacher that is itself Euler on the grid, the teacher minus the one-jump result is exactly
    s_k * sum_{m=j}^{k-1} (1/s_{m+1} - 1/s_m) (D_m - D_j) (schedule_opt.md §2.3), so its norm is
    at most the bound cost (triangle inequality), with equality for adjacent levels."""
    den = _den()
    grid = so.log_grid(SMAX, SMIN, 8)
    x = _start(3)
    states, outs = [], []
    for j in range(grid.numel()):
        d = den(x, float(grid[j]) * x.new_ones(3))
        states.append(x)
        outs.append(d)
        if j + 1 < grid.numel():
            x = so.apply_rule(so.JUMP_RULES["euler"], x, d, None, None, float(grid[j]), float(grid[j + 1]))
    teacher = so.Teacher(grid, torch.stack(states), torch.stack(outs))
    s = grid
    for j, k in [(0, 3), (2, 7), (1, 2)]:
        jump = so.apply_rule(so.JUMP_RULES["euler"], states[j], outs[j], None, None, float(s[j]), float(s[k]))
        riemann = float(s[k]) * sum((1 / float(s[m + 1]) - 1 / float(s[m])) * (outs[m] - outs[j]) for m in range(j, k))
        assert torch.allclose(states[k] - jump, riemann, rtol=1e-10, atol=1e-10)
    jump_c = so.jump_costs(teacher, "euler", "jump", 1.0)
    bound_c = so.jump_costs(teacher, "euler", "bound", 1.0)
    fin = torch.isfinite(jump_c.pair)
    # The Gram form resolves relative residuals down to ~sqrt(eps * |x|^2/|ref|^2) ~ 1e-7.
    assert (jump_c.pair[fin] <= bound_c.pair[fin] * (1 + 1e-9) + 1e-6).all()
    adj = torch.arange(grid.numel() - 1)
    assert torch.allclose(jump_c.pair[adj, adj + 1], bound_c.pair[adj, adj + 1], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Convex combination (schedule_opt.md §2.2)

def test_first_order_output_is_a_convex_combination_of_model_outputs():
    den = _den("shapes", 8, 0.05)
    sig = torch.tensor([SMAX, 6.1, 2.3, 0.9, 0.31, 0.09, SMIN], dtype=torch.float64)
    x0 = _start(4, seed=5)
    x, outs = x0, []
    states = [x0]
    for i in range(sig.numel() - 1):
        d = den(x, float(sig[i]) * x.new_ones(4))
        outs.append(d)
        x = so.apply_rule(so.JUMP_RULES["euler"], x, d, None, None, float(sig[i]), float(sig[i + 1]))
        states.append(x)
    for n in range(1, sig.numel()):
        w0, w = so.first_order_weights(sig, upto=n)
        assert (w >= 0).all() and float(w0) >= 0
        assert float(w0 + w.sum()) == pytest.approx(1.0, abs=1e-14)
        combo = w0 * x0 + sum(wi * d for wi, d in zip(w, outs[:n]))
        assert torch.allclose(combo, states[n], rtol=1e-12, atol=1e-12), n
    # Ending at 0 (ComfyUI): the last step returns the denoised output, weight e_{N-1}.
    z = torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
    w0, w = so.first_order_weights(z)
    assert float(w0) == 0 and w.tolist() == [0.0] * (sig.numel() - 1) + [1.0]


# ---------------------------------------------------------------------------------------------
# Teacher

def test_teacher_is_second_order_on_a_gaussian_with_a_closed_form_flow():
    """Data N(0, c^2 I): D(x; s) = c^2/(c^2+s^2) x and x(s) = x_T sqrt((c^2+s^2)/(c^2+s_T^2))."""
    c = 0.7
    den = lambda x, s: (c ** 2 / (c ** 2 + s.view(-1, 1, 1, 1) ** 2)) * x  # noqa: E731
    x = _start(2)
    grid = so.log_grid(SMAX, SMIN, 12)
    exact = x * math.sqrt((c ** 2 + SMIN ** 2) / (c ** 2 + SMAX ** 2))
    errs = []
    for sub in (2, 4, 8):
        t = so.teacher_pass(den, x, grid, sub)
        assert t.calls == (grid.numel() - 1) * sub + 1
        errs.append(float((t.states[-1] - exact).abs().max()))
    assert errs[0] / errs[1] > 3.0 and errs[1] / errs[2] > 3.0, errs


def test_teacher_stops_on_cancel_and_rejects_non_finite_output():
    calls = []

    def den(x, s):
        calls.append(1)
        return x * 0

    class Stop(Exception):
        pass

    def cancel():
        if len(calls) >= 3:
            raise Stop

    with pytest.raises(Stop):
        so.teacher_pass(den, _start(1), so.log_grid(SMAX, SMIN, 10), 1, check_cancel=cancel)
    assert len(calls) == 3
    with pytest.raises(FloatingPointError, match="non-finite"):
        so.teacher_pass(lambda x, s: x * math.nan, _start(1), so.log_grid(SMAX, SMIN, 4))


# ---------------------------------------------------------------------------------------------
# Whole pipeline and refinement on the exact denoiser

def test_optimised_schedule_is_not_worse_than_karras_on_unseen_noise():
    """With Karras offered (the node's default), the result on noises the optimiser never saw is at
    most 2 % worse than Karras: a DP path replaces Karras only after a significant held-out win."""
    den = _den("gmm", 64, 0.5)
    run = lambda x, s: _run("dpmpp_2m", den, x, s)  # noqa: E731
    ramp = torch.linspace(0, 1, 6, dtype=torch.float64)
    karras = (SMAX ** (1 / 7) + ramp * (SMIN ** (1 / 7) - SMAX ** (1 / 7))) ** 7
    karras = torch.cat([karras, torch.zeros(1, dtype=torch.float64)])
    x = _start(24, seed=1)
    res = so.optimise_schedule(den, x, SMAX, SMIN, 6, "dpmpp_2m", run_sampler=run, grid_size=60, substeps=2,
                               holdout=8, baselines={"karras": karras})
    candidates = len(so.DEFAULT_VARIANTS) + 1
    assert res.teacher_calls == 59 * 2 + 1 and res.sampler_calls == 6 * candidates * 2
    x_test = _start(48, seed=9)
    ref = so.teacher_pass(den, x_test, so.log_grid(SMAX, SMIN, 200), 2).final
    e_opt = float(so.relative_error(run(x_test, res.sigmas), ref).median())
    e_k = float(so.relative_error(run(x_test, karras), ref).median())
    assert e_opt <= 1.02 * e_k, (e_opt, e_k, res.chosen, res.guard, res.sigmas.tolist())


def test_refinement_never_worsens_training_error_and_keeps_the_ends():
    den = _den("gmm", 32, 0.5)
    run = lambda x, s: _run("euler", den, x, s)  # noqa: E731
    x_tr, x_ho = _start(8, 1), _start(8, 2)
    grid = so.log_grid(SMAX, SMIN, 100)
    ref_tr = so.teacher_pass(den, x_tr, grid, 2).final
    ref_ho = so.teacher_pass(den, x_ho, grid, 2).final
    start = torch.tensor([SMAX, 5.0, 1.0, 0.2, 0.0], dtype=torch.float64)
    r = so.refine_schedule(start, run, x_tr, ref_tr, x_ho, ref_ho, sweeps=3, candidates=4, sigma_floor=SMIN)
    assert all(b <= a for a, b in zip(r.train_error, r.train_error[1:]))
    assert r.train_error[-1] < r.train_error[0]
    assert float(r.sigmas[0]) == SMAX and float(r.sigmas[-1]) == 0 and (r.sigmas[1:] < r.sigmas[:-1]).all()
    assert float(r.sigmas[-2]) >= SMIN
    # Early stopping returns the schedule with the best held-out error seen.
    e = so.score(so.relative_error(run(x_ho, r.sigmas), ref_ho))
    assert e == pytest.approx(min(r.holdout_error), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Bad input

def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="sigma_min"):
        so.log_grid(1.0, 2.0)
    with pytest.raises(ValueError, match="sigma_max"):
        so.log_grid(math.inf, 0.1)
    with pytest.raises(ValueError, match="grid size"):
        so.log_grid(10, 0.1, 1)
    costs = so.jump_costs(_teacher(grid_size=5, m=1), "euler")
    with pytest.raises(ValueError, match="larger than the candidate grid"):
        so.optimal_paths(costs, 6)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        so.optimal_paths(costs, 0)
    with pytest.raises(ValueError, match="outside the optimised range"):
        so.optimal_paths(costs, 3).schedule(4)
    with pytest.raises(ValueError, match="cost must be one of"):
        so.jump_costs(_teacher(grid_size=5, m=1), "euler", "kl")
    with pytest.raises(ValueError, match="larger than the candidate grid"):
        so.optimise_schedule(_den(), _start(2), SMAX, SMIN, 30, grid_size=20)
    with pytest.raises(ValueError, match="held-out"):
        so.optimise_schedule(_den(), _start(2), SMAX, SMIN, 3, grid_size=20, refine_sweeps=1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        so.teacher_pass(_den(), _start(1), torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_score_is_mean_or_geometric_mean():
    e = torch.tensor([0.01, 0.01, 0.01, 1.0], dtype=torch.float64)
    assert so.score(e, "mean") == pytest.approx(0.2575)
    assert so.score(e, "geomean") == pytest.approx(0.01 ** 0.75, rel=1e-12)
    with pytest.raises(ValueError, match="objective"):
        so.score(e, "max")


def test_near_duplicate_levels_are_merged_and_rules_are_mapped():
    grid = so.log_grid(SMAX, SMIN, 10, include=[SMAX * (1 - 1e-9), 1.0, SMIN * (1 + 1e-9), 100.0])
    assert float(grid[0]) == SMAX and float(grid[-1]) == SMIN and grid.numel() == 11
    assert (torch.log(grid[:-1] / grid[1:]) > 1e-6).all()
    assert so.as_traits("dpmpp_2m").rule == "dpmpp_2m" and so.as_traits("dpmpp_2m").exact and so.EULER.exact
    assert so.SolverTraits(3, True).rule == "dpmpp_2m" and not so.SolverTraits(3, True).exact  # a proxy
    assert so.SolverTraits(None, True).rule == "dpmpp_2m" and so.SolverTraits(2, False).rule == "euler"
    assert not so.SolverTraits(2, False).exact
    from samplers.catalog import solver
    assert so.traits_of(solver("deis_tab3")) == so.SolverTraits(3, True)
    with pytest.raises(ValueError, match="SolverTraits"):
        so.as_traits("fewstep_deis_tab3")  # dropdown names are mapped on the ComfyUI side
    with pytest.raises(ValueError, match="order"):
        so.SolverTraits(0)


# ---------------------------------------------------------------------------------------------
# Refinement search and objective

def _bowl(target):
    """A fake sampler whose relative error is (log s_1 - log target)^2 for sigmas [s_0, s_1, 0]:
    a known optimum for the 1-D line search."""
    def run(x, sig):
        return x * (1 + (math.log(float(sig[1])) - math.log(target)) ** 2)
    return run


def test_golden_search_finds_a_known_optimum_closer_than_the_grid():
    x = _start(4)
    start = torch.tensor([SMAX, 3.0, 0.0], dtype=torch.float64)
    target = 0.37
    grid = so.refine_schedule(start, _bowl(target), x, x, x, x, sweeps=1, candidates=6, sigma_floor=SMIN,
                              search="grid", objective="mean")
    gold = so.refine_schedule(start, _bowl(target), x, x, x, x, sweeps=1, candidates=6, sigma_floor=SMIN,
                              search="golden", line_iters=6, objective="mean")
    d_grid = abs(math.log(float(grid.sigmas[1]) / target))
    d_gold = abs(math.log(float(gold.sigmas[1]) / target))
    cell = math.log(SMAX / SMIN) / 7   # the coarse grid's spacing in log sigma
    assert d_gold < d_grid and d_gold <= 2 * cell * 0.618 ** 5 + 1e-12, (d_gold, d_grid)
    # Runs counted: 1 + 1 held-out at the start, then 6 grid + 6 golden trials and one held-out run.
    assert gold.calls == 2 * (2 + 6 + 6 + 1)


@pytest.mark.parametrize("search,objective", [("golden", "mean"), ("grid", "mean"), ("golden", "geomean")])
def test_refinement_never_returns_a_worse_held_out_error_than_its_start(search, objective):
    den = _den("shapes", 8, 0.05)
    run = lambda x, s: _run("dpmpp_2m", den, x, s)  # noqa: E731
    x_tr, x_ho = _start(12, 1), _start(12, 2)
    grid = so.log_grid(SMAX, SMIN, 80)
    ref_tr, ref_ho = so.teacher_pass(den, x_tr, grid, 2).final, so.teacher_pass(den, x_ho, grid, 2).final
    start = torch.tensor([SMAX, 4.0, 1.0, 0.25, 0.05, 0.0], dtype=torch.float64)
    r = so.refine_schedule(start, run, x_tr, ref_tr, x_ho, ref_ho, sweeps=3, candidates=4, sigma_floor=SMIN,
                           search=search, objective=objective)
    h_start = so.score(so.relative_error(run(x_ho, start), ref_ho), objective)
    h_end = so.score(so.relative_error(run(x_ho, r.sigmas), ref_ho), objective)
    assert h_end <= h_start + 1e-15 and h_end == pytest.approx(min(r.holdout_error), rel=1e-12)
    assert all(b <= a for a, b in zip(r.train_error, r.train_error[1:]))


def test_multi_start_refinement_keeps_the_lowest_held_out_error():
    den = _den("gmm", 16, 0.3)
    run = lambda x, s: _run("dpmpp_2m", den, x, s)  # noqa: E731
    x = _start(24, seed=4)
    teacher = so.teacher_pass(den, x, so.log_grid(SMAX, SMIN, 40), 1)
    kw = dict(run_sampler=run, holdout=8, grid_size=40, teacher=teacher, refine_sweeps=2, refine_candidates=3,
              refine_objective="mean", refine_search="golden", refine_line_iters=2)
    one = so.optimise_schedule(den, x, SMAX, SMIN, 4, "dpmpp_2m", refine_starts=1, **kw)
    three = so.optimise_schedule(den, x, SMAX, SMIN, 4, "dpmpp_2m", refine_starts=3, **kw)
    assert one.refined_from == one.chosen and three.refined_from in three.train_errors
    assert min(three.refinement.holdout_error) <= min(one.refinement.holdout_error) + 1e-15
    assert three.sampler_calls > one.sampler_calls
    # `selected` keeps the selection's winner (the refinement starts there with one start).
    for res in (one, three):
        want = res.dp[res.chosen].schedule(4) if res.chosen in res.dp else None
        assert want is not None and torch.equal(res.selected, want)
        assert so.score(so.relative_error(run(x[:16], res.selected), res.train_reference), "mean") == \
            pytest.approx(res.train_errors[res.chosen], rel=1e-12)


def test_each_start_is_tested_against_the_guard_and_a_passing_one_is_kept():
    den = _den("gmm", 16, 0.3)
    run = lambda x, s: _run("dpmpp_2m", den, x, s)  # noqa: E731
    x = _start(24, seed=4)
    bad = torch.tensor([SMAX, 14.0, 13.5, 13.0, 0.0], dtype=torch.float64)  # a poor baseline
    kw = dict(run_sampler=run, holdout=8, grid_size=40, refine_sweeps=1, refine_candidates=3,
              refine_search="golden", refine_line_iters=2, refine_starts=3)
    res = so.optimise_schedule(den, x, SMAX, SMIN, 4, "dpmpp_2m", baselines={"karras": bad}, **kw)
    tested = res.guard["refined"]["tested"]
    assert res.guard["refined"]["kept"] and tested[-1]["kept"] and tested[-1]["start"] == res.refined_from
    assert all(not t["kept"] for t in tested[:-1])  # tried in order of held-out error, first pass kept
    assert torch.equal(res.sigmas, res.refinement.sigmas)
    # The baseline the refinement cannot beat: every start tested, none kept, the selection stays.
    good = so.optimise_schedule(den, x, SMAX, SMIN, 4, "dpmpp_2m", baselines={"karras": res.sigmas}, **kw)
    assert not good.guard["refined"]["kept"] and torch.equal(good.sigmas, good.selected)
    assert 1 <= len(good.guard["refined"]["tested"]) <= 3


def test_reused_dp_gives_the_same_result_and_is_checked():
    den = _den("gmm", 16, 0.3)
    run = lambda x, s: _run("dpmpp_2m", den, x, s)  # noqa: E731
    x = _start(12, seed=5)
    teacher = so.teacher_pass(den, x, so.log_grid(SMAX, SMIN, 30), 1)
    kw = dict(run_sampler=run, holdout=4, grid_size=30, teacher=teacher)
    first = so.optimise_schedule(den, x, SMAX, SMIN, 5, "dpmpp_2m", **kw)
    again = so.optimise_schedule(den, x, SMAX, SMIN, 3, "dpmpp_2m", dp=first.dp, **kw)
    fresh = so.optimise_schedule(den, x, SMAX, SMIN, 3, "dpmpp_2m", **kw)
    assert again.chosen == fresh.chosen and torch.equal(again.sigmas, fresh.sigmas)
    assert again.train_errors == fresh.train_errors
    with pytest.raises(ValueError, match="dp results"):
        so.optimise_schedule(den, x, SMAX, SMIN, 3, "dpmpp_2m", dp=first.dp, variants=[("jump", 1.0)], **kw)
    with pytest.raises(ValueError, match="dp results"):
        so.optimise_schedule(den, x, SMAX, SMIN, 3, "dpmpp_2m", dp={k: first.dp[k] for k in list(first.dp)[:1]}, **kw)


def test_refinement_options_are_checked_before_any_model_call():
    x = _start(2)
    calls = []
    run = lambda x, s: calls.append(1) or x  # noqa: E731
    start = torch.tensor([SMAX, 1.0, 0.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="search"):
        so.refine_schedule(start, run, x, x, search="newton")
    with pytest.raises(ValueError, match="line_iters"):
        so.refine_schedule(start, run, x, x, search="golden", line_iters=1)
    with pytest.raises(ValueError, match="objective"):
        so.refine_schedule(start, run, x, x, objective="max")
    with pytest.raises(ValueError, match="refine_search"):
        so.optimise_schedule(_den(), x, SMAX, SMIN, 2, run_sampler=run, holdout=1, grid_size=8, refine_sweeps=1,
                             refine_search="newton")
    assert not calls

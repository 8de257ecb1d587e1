"""The lab benchmark's fitted-schedule entries (bench/bench_lab_accuracy.py): the fit never sees the
benchmark's test noises, and it yields valid schedules with N model calls."""
import argparse
import sys

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


def _bench():
    from bench import bench_lab_accuracy
    return bench_lab_accuracy


@pytest.mark.parametrize("argv", [["--seed", "1"], ["--seed", "5", "--fit-seed", "4"]])
def test_fit_seeds_that_overlap_the_test_seed_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        _bench().main(argv)   # refused while parsing, before ComfyUI is loaded
    assert "test noises" in capsys.readouterr().err


@pytest.mark.parametrize("solver,nfe,expected", [
    ("dpmpp_2m", 5, (5, False)),   # one call per step, the last a denoise
    ("dpmpp_2s", 5, (3, False)),   # 2 + 2 + 1
    ("dpmpp_2s", 6, (4, True)),    # 2 + 2 + 2, stops at the last sigma > 0
    ("dpmpp_3s", 6, (3, True)),    # 3 + 3
    ("dpmpp_3s", 7, (3, False)),   # 3 + 3 + 1
    ("dpmpp_3s", 5, None),         # 3k - 2 or 3k calls only
    ("edm_heun", 8, (5, True)),
])
def test_fit_layout_finds_the_steps_that_make_n_calls(solver, nfe, expected):
    from samplers.catalog import SOLVERS
    from samplers.schedules import karras_sigmas
    spec = SOLVERS[solver]
    opts = dict(spec.options, **({"allow_short_schedule": True} if spec.multistep else {}))
    run = lambda den, x, sig: spec.fn(den, x, sig, **opts)
    karras = lambda k: karras_sigmas(k, 0.0292, 14.6, dtype=torch.float64)
    layout = _bench().fit_layout(run, torch.zeros(1, 2), karras, nfe)
    assert layout == expected
    if layout is not None:   # and the layout really makes nfe calls
        steps, open_end = layout
        sig = karras(steps)
        calls = []
        spec.fn(lambda x, s: calls.append(1) or x * 0, torch.zeros(1, 2), sig[:-1] if open_end else sig, **opts)
        assert len(calls) == nfe and (float(sig[-2]) > 0)


def test_fitted_schedules_use_other_noises_and_make_n_calls(comfy, monkeypatch):
    nodes, pack = comfy
    bench = _bench()
    runner = pack.bridge.lab_runner
    so = sys.modules[pack.__name__ + ".samplers.schedule_opt"]
    model = nodes.NODE_CLASS_MAPPINGS["FewStepLabModel"].execute("gmm", 4, 0.3, 0, "sd_discrete")[0]
    seeds = []
    real = runner.make_noise
    monkeypatch.setattr(runner, "make_noise", lambda seed, *a, **k: seeds.append(seed) or real(seed, *a, **k))
    monkeypatch.setitem(bench.FIT_DEFAULTS, "grid", 16)
    monkeypatch.setitem(bench.FIT_DEFAULTS, "sweeps", 1)
    args = argparse.Namespace(seed=0, fit_seed=1, fit_train=3, fit_holdout=2, size=4, fit_nfe=[3])
    fits = list(bench.fit_schedules(model, runner, so, args, ["fewstep_dpmpp_2m"]))
    assert seeds == [1, 2]                      # fitting and held-out noises, never the test seed 0
    (name, n, sig, info), = fits
    assert name == "fewstep_dpmpp_2m" and n == 3 and info["sampler_calls"] > 0 and info["steps"] == 3
    assert sig.numel() == 4 and float(sig[-1]) == 0 and (sig[1:] < sig[:-1]).all()
    import comfy.samplers
    noise = runner.make_noise(0, 2, 4)
    assert runner.run_sampler(model, comfy.samplers.sampler_object(name), sig.float(), noise, 0).log.nfe == 3
    # a single-step sampler that needs an open end at this NFE: 3S makes 6 calls on 2 steps ending at sigma > 0
    args.fit_nfe = [6]
    (name, n, sig, info), = bench.fit_schedules(model, runner, so, args, ["fewstep_dpmpp_3s"])
    assert info["schedule"] == bench.FIT_SCHEDULE_OPEN and info["steps"] == 2 and sig.numel() == 3 and float(sig[-1]) > 0
    assert runner.run_sampler(model, comfy.samplers.sampler_object(name), sig.float(), noise, 0).log.nfe == 6

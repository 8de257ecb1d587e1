"""The accuracy node and the scoring runner inside the real ComfyUI (in-process)."""
import sys

import pytest
import torch


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lab(comfy):
    nodes, pack = comfy
    runner = pack.bridge.lab_runner
    build = nodes.NODE_CLASS_MAPPINGS["FewStepLabModel"].execute
    return nodes, runner, build


def sampler(name):
    import comfy.samplers
    return comfy.samplers.sampler_object(name)


@pytest.mark.parametrize("name,steps,order", [("euler", (20, 40, 80), 1.0), ("heun", (10, 20, 40), 2.0)])
def test_comfy_sampler_observed_order_matches_theory(lab, name, steps, order):
    """ComfyUI's own Euler and Heun, run through its sampling path on a smooth lab data set."""
    _, runner, build = lab
    observed_order = sys.modules[runner.__name__.rsplit(".bridge.", 1)[0] + ".samplers.accuracy"].observed_order
    model = build("gmm", 2, 1.0, 0, "sd_discrete")[0]
    nfes, errs = [], []
    for n in steps:
        res, _ = runner.score(model, sampler(name), runner.schedule_sigmas(model, "karras", n), seed=3, batch=4, size=4)
        nfes.append(res.nfe)
        errs.append(res.mean())
    assert nfes == ([n for n in steps] if name == "euler" else [2 * n - 1 for n in steps])
    assert abs(observed_order(nfes, errs) - order) < 0.2, (nfes, errs)


def test_accuracy_node_outputs(lab):
    nodes, runner, build = lab
    node = nodes.NODE_CLASS_MAPPINGS["FewStepLabAccuracy"]
    model = build("shapes", 8, 0.05, 0, "sd_discrete")[0]
    out = node.execute(model, sampler("dpmpp_2m"), "karras", 6, "steps", 1, 4, 8, "model sample")
    mean, median, nfe, report, plot, samples, exact = out.result
    assert nfe == 6 and 0 < median and 0 < mean < 1
    assert "NFE (model calls): 6" in report and "sigmas (6 steps)" in report
    assert plot.ndim == 4 and plot.shape[0] == 1 and plot.shape[-1] == 3 and plot.std() > 0.05
    assert samples["samples"].shape == exact["samples"].shape == (4, 4, 8, 8)
    # The reported error is the RMSE between the two returned latents.
    rmse = (samples["samples"].double() - exact["samples"].double()).flatten(1).pow(2).mean(1).sqrt()
    assert abs(float(rmse.mean()) - mean) < 1e-5
    ui = out.ui["fewstep_accuracy"][0]
    assert ui["nfe"] == 6 and abs(ui["rmse_mean_target"] - mean) < 1e-12
    # More steps of the same solver get closer to the exact sample.
    better = node.execute(model, sampler("dpmpp_2m"), "karras", 24, "steps", 1, 4, 8, "model sample").result[0]
    assert better < mean / 4


def test_equal_model_calls_mode(lab):
    nodes, runner, build = lab
    node = nodes.NODE_CLASS_MAPPINGS["FewStepLabAccuracy"]
    model = build("gmm", 4, 0.3, 0, "sd_discrete")[0]
    res = node.execute(model, sampler("heun"), "karras", 7, "model calls", 0, 2, 4, "model sample").result
    assert res[2] == 7  # Heun: 2 calls per step, 1 on the last step to 0 -> 4 steps
    with pytest.raises(ValueError, match="cannot make exactly 8 model calls"):
        node.execute(model, sampler("heun"), "karras", 8, "model calls", 0, 2, 4, "model sample")


def test_schedule_endpoint_target_and_given_sigmas(lab):
    nodes, runner, build = lab
    node = nodes.NODE_CLASS_MAPPINGS["FewStepLabAccuracy"]
    model = build("gmm", 4, 0.3, 0, "sd_discrete")[0]
    sig = runner.schedule_sigmas(model, "karras", 10)[:-1].clone()  # stop at sigma_min, no final 0
    before = sig.clone()
    out = node.execute(model, sampler("uni_pc"), "karras", 3, "steps", 0, 2, 4, "schedule endpoint", sigmas=sig)
    assert torch.equal(sig, before), "the caller's sigmas were modified"
    assert "stops at sigma" in out.result[3]
    assert out.result[2] == 9


def test_batch_size_does_not_change_a_member(lab):
    _, runner, build = lab
    model = build("shapes", 8, 0.05, 0, "sd_discrete")[0]
    sig = runner.schedule_sigmas(model, "karras", 5)
    small, _ = runner.score(model, sampler("euler"), sig, seed=5, batch=2, size=8)
    large, _ = runner.score(model, sampler("euler"), sig, seed=5, batch=5, size=8)
    assert torch.allclose(small.sample_rmse, large.sample_rmse[:2], rtol=1e-6, atol=1e-9)


def test_edm_lab_model_scores(lab):
    _, runner, build = lab
    model = build("gmm", 2, 0.5, 0, "edm")[0]
    errs = []
    for n in (30, 60):
        res, _ = runner.score(model, sampler("heun"), runner.schedule_sigmas(model, "karras", n), seed=0, batch=2, size=4)
        errs.append(res.mean())
    assert res.sigmas[0] == pytest.approx(80.0, rel=1e-5) and res.sigmas[-2] == pytest.approx(0.002, rel=1e-5)
    assert errs[1] < errs[0] / 2.5, errs  # converging at better than first order


def test_non_lab_model_is_refused(lab):
    nodes, runner, build = lab
    import comfy.model_patcher
    other = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), load_device="cpu", offload_device="cpu")
    node = nodes.NODE_CLASS_MAPPINGS["FewStepLabAccuracy"]
    with pytest.raises(ValueError, match="lab MODEL"):
        node.execute(other, sampler("euler"), "karras", 4, "steps", 0, 2, 4, "model sample")


@pytest.mark.parametrize("sigmas,match", [
    ([14.6, float("nan"), 0.0], "finite"),
    ([1.0, 2.0, 0.0], "non-increasing"),
    ([5.0], "at least 2"),
])
def test_bad_sigmas_are_refused_before_sampling(lab, sigmas, match):
    nodes, runner, build = lab
    model = build("gmm", 2, 0.3, 0, "sd_discrete")[0]
    node = nodes.NODE_CLASS_MAPPINGS["FewStepLabAccuracy"]
    with pytest.raises(ValueError, match=match):
        node.execute(model, sampler("euler"), "karras", 4, "steps", 0, 2, 4, "model sample", sigmas=torch.tensor(sigmas))


@pytest.mark.parametrize("kwargs,match", [(dict(batch_size=0), "batch_size"), (dict(steps=0), "steps"),
                                          (dict(target="best"), "target")])
def test_bad_node_inputs(lab, kwargs, match):
    nodes, runner, build = lab
    model = build("gmm", 2, 0.3, 0, "sd_discrete")[0]
    args = dict(model=model, sampler=sampler("euler"), scheduler="karras", steps=4, count="steps", seed=0,
                batch_size=2, size=4, target="model sample")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        nodes.NODE_CLASS_MAPPINGS["FewStepLabAccuracy"].execute(**args)

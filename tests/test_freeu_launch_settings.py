"""freeu.fused's public launch settings (what bench/bench_freeu.py sweeps): set, read back, restored;
unknown names and bad values refused by name with nothing changed."""
import pytest

from freeu import fused


@pytest.fixture
def saved():
    before = fused.launch_settings()
    yield before
    fused.set_launch_settings(**before)


def test_set_returns_the_previous_values_and_restores(saved):
    assert set(saved) == {"tile", "num_warps", "scale_piece", "early_read", "mean_chunk", "sum_ct",
                          "sum_block", "pdl"}
    previous = fused.set_launch_settings(tile=4096, num_warps=4, early_read=False, pdl=False)
    assert previous == saved
    now = fused.launch_settings()
    assert (now["tile"], now["num_warps"], now["early_read"], now["pdl"]) == (4096, 4, False, False)
    assert fused._TILE == 4096 and fused._NUM_WARPS == 4  # the values the launches read
    fused.set_launch_settings(**previous)
    assert fused.launch_settings() == saved


@pytest.mark.parametrize("changes, named", [
    ({"tiles": 1024}, "tiles"), ({"tile": 0}, "tile"), ({"num_warps": 2.0}, "num_warps"),
    ({"scale_piece": True}, "scale_piece"), ({"early_read": 1}, "early_read"), ({"pdl": "on"}, "pdl"),
])
def test_bad_settings_are_refused_by_name(saved, changes, named):
    with pytest.raises(ValueError, match=named):
        fused.set_launch_settings(sum_ct=16, **changes)
    assert fused.launch_settings() == saved  # nothing changed, sum_ct included


def test_failed_devices_is_a_copy():
    devices = fused.failed_devices()
    assert isinstance(devices, list)
    devices.append("cuda:99")
    assert "cuda:99" not in fused.failed_devices()

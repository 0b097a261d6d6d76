"""The warm-up and ramp of a cluster term's weight (InterCLR, PCL), and checkpoints of the on/off switch it replaced."""

import pytest
import torch

from clusterclr.build import build_parts, load_method_state
from clusterclr.configure import build_config
from clusterclr.methods.ramp import EpochRamp

TINY = ["model.width=0.125", "optim.batch_size=128", "method.projection_hidden_dim=32", "method.projection_dim=16",
        "method.queue_size=256"]


def test_the_fraction_is_off_in_the_warm_up_then_rises_linearly():
    assert [EpochRamp(2, 4).at(e) for e in range(8)] == [0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert [EpochRamp(1, 0).at(e) for e in range(3)] == [0, 1, 1] == [EpochRamp(1, 1).at(e) for e in range(3)]
    ramp = EpochRamp(0, 2)
    assert ramp.value == 0.0  # off until an epoch starts
    assert ramp.set_epoch(0) == 0.5 and ramp.value == 0.5 and ramp.fraction.item() == 0.5
    restored = EpochRamp(0, 2)
    restored.load_state_dict(ramp.state_dict())
    assert restored.value == 0.5  # a resumed run reads it back without calling set_epoch


SMALL_BANK = ["method.negative_pool=256", "method.negatives=64"]


@pytest.mark.parametrize(
    "method, extra, old_key, ramp",
    [("interclr", SMALL_BANK, "inter_active", "inter_ramp"), ("pcl", [], "proto_active", "proto_ramp")],
)
def test_checkpoints_of_the_on_off_switch_load_as_the_ramp(method, extra, old_key, ramp):
    parts = build_parts(build_config(flags={"method.name": method}, overrides=TINY + extra))
    state = parts.method.state_dict()
    del state[f"{ramp}.fraction"]
    for switch, fraction in ((True, 1.0), (False, 0.0)):
        load_method_state(parts.method, {**state, old_key: torch.tensor(switch)})
        assert getattr(parts.method, ramp).value == fraction
        assert getattr(parts.method, ramp).fraction.dtype == torch.float32

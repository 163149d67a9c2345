"""In-memory snapshots: each keeps the state of its own step, and a new one reuses the dropped one's buffers."""

import torch

from turnout.guard.state import Snapshots


def test_snapshots_keep_their_own_states_and_reuse_the_dropped_buffers():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    snaps = Snapshots(2)
    states = {}
    for step in (10, 20, 30):
        model(torch.randn(3, 8)).square().sum().backward()
        opt.step()
        opt.zero_grad()
        states[step] = ({k: v.clone() for k, v in model.state_dict().items()},
                        opt.state_dict()["state"][0]["exp_avg"].clone())
        first = snaps.items[0] if len(snaps.items) == 2 else None
        ptr = first.model["weight"].data_ptr() if first else None
        snaps.take(step, step, model, opt, None)
        if ptr is not None:  # step 30 went into step 10's buffers
            assert snaps.items[-1].model["weight"].data_ptr() == ptr
    assert [s.step for s in snaps.items] == [20, 30]
    for s in snaps.items:
        weights, exp_avg = states[s.step]
        for k, v in weights.items():
            torch.testing.assert_close(s.model[k], v, rtol=0, atol=0)
        torch.testing.assert_close(s.optimizer["state"][0]["exp_avg"], exp_avg, rtol=0, atol=0)
    # restoring the older one brings back its weights and moments, and leaves the snapshot intact
    snaps.items[0].restore(model, opt, None)
    torch.testing.assert_close(model.weight, states[20][0]["weight"], rtol=0, atol=0)
    torch.testing.assert_close(opt.state_dict()["state"][0]["exp_avg"], states[20][1], rtol=0, atol=0)
    model(torch.randn(3, 8)).square().sum().backward()
    opt.step()
    torch.testing.assert_close(snaps.items[0].model["weight"], states[20][0]["weight"], rtol=0, atol=0)
    torch.testing.assert_close(snaps.items[0].optimizer["state"][0]["exp_avg"], states[20][1], rtol=0, atol=0)

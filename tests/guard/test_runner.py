"""The closure runner: a step run again in place starts from the model's state at the step's start, buffers too."""

import torch

from turnout.backend import get_backend
from turnout.guard.runner import ClosureRunner, Work


def test_a_step_run_twice_updates_the_batchnorm_statistics_once():
    """(batch_norm writes its running statistics without bumping their version counters, so the runner copies every
    buffer at each step's start rather than trusting the counters)"""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    runner = ClosureRunner(model, opt, get_backend("cpu"), checksums=False)
    x = torch.randn(16, 6)
    work = Work(lambda m, b: m(b).square().mean(), x, True)
    bn = model[1]
    for step in range(3):
        start = bn.running_mean.clone()
        runner.begin()
        runner.compute(work)
        once = bn.running_mean.clone()
        runner.compute(work)  # the in-place re-run starts from the step's own statistics
        torch.testing.assert_close(bn.running_mean, once, rtol=0, atol=0)
        assert not torch.equal(once, start)
        runner.apply(runner.compute(work))

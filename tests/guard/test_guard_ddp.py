"""Guard around a DDP-wrapped and an FSDP2-sharded model, two ranks on gloo: a corrupted product on one rank is found
and healed, the replicas stay equal, and the weights equal those of the unfaulted two-rank run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.dist

WORKER = r'''
import json, sys
import torch, torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from turnout import Guard
from turnout.train.step import bit_sum

target, out, wrap = sys.argv[1], sys.argv[2], sys.argv[3]
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
if wrap == "ddp":
    model = DDP(model)
else:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.device_mesh import init_device_mesh
    fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
guard = Guard(model, opt, target=target, health={"max_faults": 10})
g = torch.Generator().manual_seed(100 + rank)
steps = []
for i in range(16):
    x = torch.randn(8, 8, generator=g)
    def closure(m, b):
        loss = F.mse_loss(m(b), b[:, :2].sin())
        loss.backward()
        return loss
    r = guard.step(closure, x)
    steps.append([r.applied, [e["kind"] for e in r.events]])
guard.close()
full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
fp = int(bit_sum(full, torch.device("cpu")))
if rank == 1 or rank == 0:
    open(f"{out}.{rank}", "w").write(json.dumps({"fingerprint": fp, "steps": steps}))
dist.destroy_process_group()
'''


def _run(tmp_path, target: str, name: str, wrap: str) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / name
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(script), target, str(out), wrap], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads((tmp_path / f"{name}.{k}").read_text()) for k in (0, 1)]


@pytest.mark.parametrize("wrap", ["ddp", "fsdp2"])
def test_a_corrupted_product_on_one_rank_is_healed_and_the_replicas_agree(tmp_path, wrap):
    profile = tmp_path / "rank1.toml"
    profile.write_text('[profile]\ndescription = "one rank corrupts"\n\n[[fault]]\nkind = "sdc"\nops = ["mm", "addmm"]\n'
                       'at_steps = [7]\nbit = 27\nranks = [1]\ncall = 2\n')
    clean = _run(tmp_path, "cpu", "clean", wrap)
    faulty = _run(tmp_path, f"sim:{profile}", "faulty", wrap)
    assert clean[0]["fingerprint"] == clean[1]["fingerprint"]
    assert faulty[0]["fingerprint"] == faulty[1]["fingerprint"] == clean[0]["fingerprint"]
    assert "sdc" in faulty[0]["steps"][6][1]  # rank 0 records what rank 1 saw (all-reduced flagged count)
    assert all(applied for applied, _ in faulty[0]["steps"])

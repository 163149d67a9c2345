import json

import torch

from turnout.ckpt import Checkpointer, Manifest, latest_checkpoint, list_checkpoints, verify
from turnout.errors import CheckpointError


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m(torch.randn(5, 8)).square().sum().backward()
    opt.step()
    return m, opt


def _manifest(step):
    return Manifest(step=step, samples=step * 4, model_args={"dim": 8}, config={}, target="cpu", world_size=1)


def test_save_load_round_trip_keep_k(tmp_path):
    m, opt = _model()
    ck = Checkpointer(tmp_path, keep=2, attach={"note.txt": tmp_path / "note.txt"})
    (tmp_path / "note.txt").write_text("hi")
    for s in (1, 2, 3):
        ck.save(m, opt, _manifest(s))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    folder = latest_checkpoint(tmp_path)
    assert (folder / "note.txt").read_text() == "hi" and verify(folder) == []
    m2 = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
    man = ck.load(folder, m2, opt2)
    assert man.step == 3 and man.samples == 12
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])


def test_corrupted_checkpoint_is_refused_and_previous_used(tmp_path):
    m, opt = _model()
    ck = Checkpointer(tmp_path, keep=3)
    for s in (1, 2):
        ck.save(m, opt, _manifest(s))
    newest = list_checkpoints(tmp_path)[-1][1]
    shard = next(newest.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    refused = []
    assert latest_checkpoint(tmp_path, on_refused=lambda p, why: refused.append((p, why))).name.endswith("1")
    assert refused and "sha256 mismatch" in refused[0][1][0]
    try:
        ck.load(newest, m, opt)
        raise AssertionError("a corrupted checkpoint loaded")
    except CheckpointError as e:
        assert "sha256" in str(e)


def test_missing_manifest_and_partial_tmp_are_not_checkpoints(tmp_path):
    m, opt = _model()
    ck = Checkpointer(tmp_path, keep=3)
    ck.save(m, opt, _manifest(1))
    folder = list_checkpoints(tmp_path)[-1][1]
    (folder / "manifest.json").unlink()
    assert "no manifest.json" in verify(folder)[0]
    (tmp_path / "checkpoints" / "step-00000009.tmp").mkdir()  # a writer that died mid-save
    assert latest_checkpoint(tmp_path) is None


def test_async_save_snapshots_before_training_continues(tmp_path):
    m, opt = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ck = Checkpointer(tmp_path, keep=2, async_save=True)
    ck.save(m, opt, _manifest(1))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)  # training goes on while the checkpoint is written
    folder = ck.wait()
    m2, opt2 = _model()
    ck.load(folder, m2, opt2)
    for k, v in m2.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_prune_counts_verified_checkpoints_and_sets_corrupt_ones_aside(tmp_path):
    m, opt = _model()
    moved = []
    ck = Checkpointer(tmp_path, keep=2, on_set_aside=lambda f, dest, why: moved.append((f.name, dest.name, why)))
    for s in (1, 2, 3):
        ck.save(m, opt, _manifest(s))
    shard = next(list_checkpoints(tmp_path)[-1][1].glob("*.distcp"))  # step 3 goes bad after it was written
    shard.write_bytes(shard.read_bytes()[:-1])
    fresh = Checkpointer(tmp_path, keep=2, on_set_aside=ck.on_set_aside)  # a new process: nothing cached
    fresh.save(m, opt, _manifest(4))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]  # 3 is not counted: 2 stays, 1 goes
    assert moved == [("step-00000003", "step-00000003.corrupt", moved[0][2])] and "sha256" in moved[0][2][0]
    assert (tmp_path / "checkpoints" / "step-00000003.corrupt").is_dir()
    assert not fresh.holds(3) and fresh.holds(4) and fresh.newest().name == "step-00000004"


def test_a_second_corrupt_copy_of_a_step_does_not_replace_the_first(tmp_path):
    m, opt = _model()
    ck = Checkpointer(tmp_path, keep=3)
    for _ in range(2):
        folder = ck.save(m, opt, _manifest(1))
        (folder / "manifest.json").write_text("{}")
        assert Checkpointer(tmp_path, keep=3).newest() is None
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001.corrupt",
                                                                           "step-00000001.corrupt-2"]


def test_manifest_covers_itself(tmp_path):
    m, opt = _model()
    folder = Checkpointer(tmp_path, keep=2).save(m, opt, _manifest(3))
    path = folder / "manifest.json"
    raw = json.loads(path.read_text())
    assert verify(folder) == [] and len(raw["digest"]) == 64
    for field, value in (("samples", 0), ("step", 1), ("digest", "")):
        edited = dict(raw, **{field: value})
        path.write_text(json.dumps(edited))
        problems = verify(folder)
        assert len(problems) == 1 and ("digest does not match" in problems[0] or "no digest" in problems[0])
    path.write_text(json.dumps(raw, indent=3))  # the same content laid out differently still verifies
    assert verify(folder) == []

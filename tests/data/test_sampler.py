import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.data import DataError, GlobalSampler, val_batches

# token i has value i, so every window shows where it starts
TOKENS = np.arange(10_001, dtype=np.int64)


def _stream(sampler, n_steps, batch, rank=0, world=1):
    return [sampler.next_batch(batch, rank, world) for _ in range(n_steps)]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


def test_windows_are_shifted_pairs():
    s = GlobalSampler(TOKENS, seq_len=16, seed=0)
    assert s.n_samples == 625
    x, y = s.next_batch(8)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1) and x.is_contiguous() and y.is_contiguous()
    starts = [s.sample_at(g) for g in range(8)]
    assert x[:, 0].tolist() == starts and all(st % 16 == 0 for st in starts)
    assert s.state_dict() == {"index": 8}


def test_works_on_uint16_memmap(tmp_path):
    path = tmp_path / "t.bin"
    (np.arange(1000) % 65536).astype("<u2").tofile(path)
    mm = np.memmap(path, dtype="<u2", mode="r")
    x, y = GlobalSampler(mm, 10, seed=3).next_batch(4)
    assert x.dtype == torch.int64 and torch.equal(y, x + 1)


def test_deterministic_and_seed_dependent():
    a = _stream(GlobalSampler(TOKENS, 16, seed=7), 5, 8)
    assert _same(a, _stream(GlobalSampler(TOKENS, 16, seed=7), 5, 8))
    assert not _same(a, _stream(GlobalSampler(TOKENS, 16, seed=8), 5, 8))


def test_reproducible_everywhere():
    # numpy's PCG64 stream for SeedSequence([seed, epoch]); a change here changes every run's data order
    s = GlobalSampler(np.arange(101), seq_len=10, seed=0)
    assert s.permutation(0).tolist() == [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]
    assert s.permutation(1).tolist() == [9, 1, 3, 8, 7, 6, 0, 4, 2, 5]


def test_each_epoch_covers_every_window_once_in_a_new_order():
    s = GlobalSampler(TOKENS, 16, seed=0)
    n = s.n_samples
    epochs = [[s.sample_at(e * n + i) for i in range(n)] for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(0, n * 16, 16))
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    # a batch that straddles the end of an epoch takes the last of one order and the first of the next
    s.skip(n - 3)
    assert s.epoch == 0
    x, _ = s.next_batch(6)
    assert x[:, 0].tolist() == epochs[0][-3:] + epochs[1][:3]
    assert s.epoch == 1


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_tokens=st.integers(40, 3000),
    seq_len=st.integers(1, 32),
    per_rank=st.integers(1, 5),
    start=st.integers(0, 500),
    steps=st.integers(1, 3),
)
def test_ranks_partition_the_global_batch(seed, n_tokens, seq_len, per_rank, start, steps):
    tokens = np.arange(n_tokens, dtype=np.int64)
    for world in (1, 2, 3, 4):
        batch = per_rank * world
        whole = _stream(GlobalSampler(tokens, seq_len, seed, index=start), steps, batch)
        parts = [_stream(GlobalSampler(tokens, seq_len, seed, index=start), steps, batch, r, world)
                 for r in range(world)]
        for step, (x, y) in enumerate(whole):
            for r in range(world):
                # rank r holds global rows r, r + W, ...: (g - s*B) % W == r
                assert torch.equal(parts[r][step][0], x[r::world]) and torch.equal(parts[r][step][1], y[r::world])
            assert torch.equal(torch.cat([p[step][0] for p in parts]).sort(0).values, x.sort(0).values)


def test_resume_from_state_dict_equals_uninterrupted():
    full = _stream(GlobalSampler(TOKENS, 16, seed=5), 10, 12)
    first = GlobalSampler(TOKENS, 16, seed=5)
    head = _stream(first, 4, 12)
    state = first.state_dict()
    assert state == {"index": 48}
    resumed = GlobalSampler(TOKENS, 16, seed=5)
    resumed.load_state_dict(state)
    assert _same(head + _stream(resumed, 6, 12), full)
    # resumed on three ranks instead of one: same samples, same order
    ranks = [GlobalSampler(TOKENS, 16, seed=5, index=state["index"]) for _ in range(3)]
    for step in range(4, 10):
        xs = [r.next_batch(12, i, 3)[0] for i, r in enumerate(ranks)]
        merged = torch.stack(xs, 1).reshape(12, 16)  # row j of rank i is global row i + 3j
        assert torch.equal(merged, full[step][0])


def test_skip_equals_advancing():
    a = GlobalSampler(TOKENS, 16, seed=2)
    _stream(a, 3, 8)
    b = GlobalSampler(TOKENS, 16, seed=2)
    b.skip(24)
    assert a.state_dict() == b.state_dict()
    assert _same(_stream(a, 2, 8), _stream(b, 2, 8))


def test_bad_arguments():
    s = GlobalSampler(TOKENS, 16, seed=0)
    with pytest.raises(ValueError, match="not divisible by world size 3"):
        s.next_batch(8, 0, 3)
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        s.next_batch(8, 2, 2)
    with pytest.raises(ValueError, match="negative"):
        s.skip(-1)
    for bad in ({}, {"index": -1}, {"index": 1.5}, {"index": True}, None):
        with pytest.raises(ValueError, match="non-negative integer 'index'"):
            s.load_state_dict(bad)
    s.load_state_dict({"index": np.int64(4)})
    assert s.state_dict() == {"index": 4} and type(s.state_dict()["index"]) is int
    with pytest.raises(DataError, match="fewer than seq_len"):
        GlobalSampler(np.arange(16), 16, seed=0)


def test_val_batches_fixed_and_world_size_independent():
    val = np.arange(1001, dtype=np.int64)
    one = val_batches(val, n_batches=3, batch_size=4, seq_len=10)
    assert _same(one, val_batches(val, 3, 4, 10))
    assert [x.shape for x, _ in one] == [(4, 10)] * 3
    starts = torch.cat([x[:, 0] for x, _ in one]).tolist()
    assert starts == sorted(starts) and len(set(starts)) == 12 and starts[0] == 0 and starts[-1] > 800  # spread out
    for world in (2, 4):
        parts = [val_batches(val, 3, 4, 10, rank=r, world_size=world) for r in range(world)]
        for b, (x, y) in enumerate(one):
            for r in range(world):
                assert torch.equal(parts[r][b][0], x[r::world]) and torch.equal(parts[r][b][1], y[r::world])


def test_val_batches_small_split_repeats_windows():
    val = np.arange(31, dtype=np.int64)  # 3 windows of 10
    x, y = val_batches(val, 1, 6, 10)[0]
    assert x[:, 0].tolist() == [0, 0, 10, 10, 20, 20] and torch.equal(y, x + 1)
    with pytest.raises(DataError, match="validation split has 5 tokens"):
        val_batches(np.arange(5), 1, 2, 10)
    assert val_batches(val, 0, 4, 10) == []

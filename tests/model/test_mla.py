"""MLA: the absorbed latent-cache path against the training path, incremental and ragged decoding."""

import pytest
import torch

from turnout.model import LatentCache, ModelArgs, Transformer

from .oracle import mtp_logits, randomize_, rel_err, small_args

CASES = {"base": dict(), "no_qlora_yarn": dict(q_lora_rank=None, rope_type="yarn", rope_factor=4.0,
                                               original_seq_len=16, mscale=1.0, mscale_all_dim=1.0)}


def _model(**kw):
    model = Transformer(small_args(**kw)).eval()
    randomize_(model, seed=11)
    return model


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_absorbed_path_equals_training_path(case):
    model = _model(**CASES[case])
    tokens = torch.randint(0, 512, (3, 24))
    cache = LatentCache(model.args, max_batch=3, max_seq=32)
    assert rel_err(model(tokens, cache=cache, start_pos=0), model(tokens)) <= 1e-5


@torch.no_grad()
def test_eager_attention_equals_sdpa():
    model = _model()
    tokens = torch.randint(0, 512, (2, 20))
    ref = model(tokens)
    for layer in model.layers:
        layer.attn.attn_impl = "eager"
    assert rel_err(model(tokens), ref) <= 1e-5


@pytest.mark.parametrize("T", [32, 18, 5])  # 4 query blocks; 18 and 5 do not split into 4: one block
def test_blocked_attention_equals_sdpa_with_gradients(T, monkeypatch):
    torch.manual_seed(3)
    ref, alt = _model(), _model()
    alt.set_kernels(attn_impl="blocked")
    x, y = torch.randint(0, 512, (2, T)), torch.randint(0, 512, (2, T))
    out_ref, out_alt = ref(x, targets=y), alt(x, targets=y)
    torch.testing.assert_close(out_alt.loss, out_ref.loss, rtol=1e-5, atol=1e-6)
    out_ref.loss.backward()
    out_alt.loss.backward()
    for (name, p), q in zip(ref.named_parameters(), alt.parameters()):
        if p.grad is not None:
            assert rel_err(q.grad, p.grad) <= 1e-5, name
    monkeypatch.setattr("turnout.model.mla.MAX_LEN", T - 1)  # longer than MAX_LEN: SDPA, same numbers
    with torch.no_grad():
        assert rel_err(alt(x), ref(x)) <= 1e-6


def test_blocked_attention_and_explicit_norm_train_under_bf16_autocast():
    """Autocast hands attention fp32 q/k (RoPE promotes) and bf16 v: the blocked kernel runs all of it in bf16,
    forward and backward, like SDPA does; the loss matches the default kernels' to bf16 precision."""
    torch.manual_seed(4)
    ref = _model()
    alt = _model()
    alt.load_state_dict(ref.state_dict())
    alt.set_kernels(attn_impl="blocked", norm_impl="explicit")
    x, y = torch.randint(0, 512, (2, 32)), torch.randint(0, 512, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ref(x, targets=y).loss, alt(x, targets=y).loss
    b.backward()
    assert torch.isfinite(b) and abs(a.item() - b.item()) < 0.02 * abs(a.item())
    assert all(torch.isfinite(p.grad).all() for p in alt.parameters() if p.grad is not None)


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_incremental_decoding_equals_full_forward(case):
    model = _model(**CASES[case])
    tokens = torch.randint(0, 512, (2, 20))
    full = model(tokens)
    cache = LatentCache(model.args, max_batch=2, max_seq=20)
    out = [model(tokens[:, :12], cache=cache, start_pos=0)]
    for t in range(12, 20):
        out.append(model(tokens[:, t:t + 1], cache=cache, start_pos=t))
    assert rel_err(torch.cat(out, dim=1), full) <= 1e-5


@torch.no_grad()
def test_rows_at_different_positions_share_a_call():
    """Continuous batching: rows in their own cache slots, at their own lengths, padded prefill, then one batch."""
    model = _model()
    a, b = torch.randint(0, 512, (1, 15)), torch.randint(0, 512, (1, 11))
    full_a, full_b = model(a), model(b)
    cache = LatentCache(model.args, max_batch=4, max_seq=16)
    slots = torch.tensor([3, 1])
    # ragged prefill in one call: b's 6 real tokens are padded to a's 9 with junk tokens
    prompt = torch.cat([a[:, :9], torch.cat([b[:, :6], torch.full((1, 3), 7)], dim=1)])
    pre = model(prompt, cache=cache, start_pos=0, slots=slots)
    assert rel_err(pre[0, :9], full_a[0, :9]) <= 1e-5 and rel_err(pre[1, :6], full_b[0, :6]) <= 1e-5
    # decode both rows together at different positions; b overwrites its padding as it goes
    pos = torch.tensor([9, 6])
    for i in range(5):
        step = torch.stack([a[0, 9 + i], b[0, 6 + i]]).view(2, 1)
        out = model(step, cache=cache, start_pos=pos + i, slots=slots)
        assert rel_err(out[0, 0], full_a[0, 9 + i]) <= 1e-5
        assert rel_err(out[1, 0], full_b[0, 6 + i]) <= 1e-5


@pytest.mark.parametrize("as_list", [False, True])
@pytest.mark.parametrize("slots", [[0, 1, 2], [1, 2, 3], [3, 0, 2]])
@torch.no_grad()
def test_slots_and_positions_as_tensors_or_lists(slots, as_list):
    """Contiguous slots (views), scattered slots (gathers), as ints or tensors: all decode like a full forward."""
    model = _model()
    tokens = torch.randint(0, 512, (3, 14))
    full = model(tokens)
    cache = LatentCache(model.args, max_batch=4, max_seq=16)
    lens = [10, 7, 12]
    for i, n in enumerate(lens):  # prefill each row alone, into its own slot
        model(tokens[i:i + 1, :n], cache=cache, start_pos=0, slots=[slots[i]] if as_list else torch.tensor([slots[i]]))
    for k in range(2):
        pos = [n + k for n in lens]
        step = torch.stack([tokens[i, p] for i, p in enumerate(pos)]).view(3, 1)
        out = model(step, cache=cache, start_pos=pos if as_list else torch.tensor(pos),
                    slots=slots if as_list else torch.tensor(slots))
        for i, p in enumerate(pos):
            assert rel_err(out[i, 0], full[i, p]) <= 1e-5


def test_cache_bytes_per_token_and_limits():
    v3 = ModelArgs.preset("v3-671b")
    assert LatentCache(v3, 1, 1, dtype=torch.bfloat16).bytes_per_token == (512 + 64) * 61 * 2
    args = small_args()
    cache = LatentCache(args, max_batch=2, max_seq=8)
    assert cache.kv.shape == (3, 2, 8, 32 + 8)  # [layers, rows, seq, kv_lora_rank + rope]
    assert cache.bytes_per_token == (32 + 8) * 3 * 4
    model = Transformer(args).eval()
    with pytest.raises(ValueError, match="max_seq"):
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache, start_pos=6)
    with pytest.raises(ValueError, match="max_batch"):
        model(torch.zeros(3, 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="slots"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache, slots=[2])
    with pytest.raises(ValueError, match="start_pos"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache, start_pos=[1, 2])
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(1, 2, dtype=torch.long), targets=torch.zeros(1, 2, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="cache="):
        model(torch.zeros(1, 2, dtype=torch.long), start_pos=3)
    with pytest.raises(ValueError, match="max_seq_len"):
        LatentCache(args, 1, args.max_seq_len + 1)


@torch.no_grad()
def test_cached_mtp_draft_equals_the_training_path():
    """Drafting: the MTP module on its cache layer, prefilled then fed one or two positions at a time, gives the
    depth-1 logits of the full (training) forward: position i from h_i and the embedding of token i+1."""
    model = _model(mtp_depth=1)
    x = torch.randint(0, 512, (2, 20))
    full = mtp_logits(model, x)[:, :-1]  # [2, 19, V]: predicts token i + 2
    cache = LatentCache(model.args, 2, 24, mtp_layers=1)
    logits, hidden = model(x[:, :12], cache=cache, start_pos=0, return_hidden=True)
    assert rel_err(logits, model(x[:, :12])) <= 1e-5 and hidden.shape == (2, 12, model.args.dim)
    got = [model.draft(hidden, x[:, 1:13], cache=cache, start_pos=0)]
    for t, n in ((12, 1), (13, 2), (15, 1), (16, 2)):  # the engine feeds one or two new positions per step
        _, hidden = model(x[:, t:t + n], cache=cache, start_pos=[t, t], return_hidden=True)
        got.append(model.draft(hidden, x[:, t + 1:t + 1 + n], cache=cache, start_pos=[t, t]))
    assert rel_err(torch.cat(got, dim=1), full[:, :18]) <= 1e-5
    with pytest.raises(ValueError, match="no MTP layer"):
        model.draft(hidden, x[:, :1], cache=LatentCache(model.args, 2, 24), start_pos=0)
    with pytest.raises(ValueError, match="mtp_layers"):
        LatentCache(model.args, 1, 8, mtp_layers=2)

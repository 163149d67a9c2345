"""Sampling (filters, per-request generators) and incremental text with stop strings."""

from __future__ import annotations

import pytest
import torch

from turnout.data import Tokenizer
from turnout.serve.chat import CHAT_STOP, render_chat
from turnout.serve.sampling import (GREEDY_BELOW, SamplingError, SamplingParams, filter_logits, make_generator,
                                    sample_rows, verify_drafts)
from turnout.serve.stops import TextAssembler


def test_filters_keep_what_they_should():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    x = filter_logits(logits, SamplingParams(top_k=2))
    assert torch.isfinite(x).tolist() == [True, True, False, False, False]
    # probabilities ~ [.64, .24, .09, .03, .01]: top_p 0.8 keeps the first two (the second crosses 0.8)
    x = filter_logits(logits, SamplingParams(top_p=0.8))
    assert torch.isfinite(x).tolist() == [True, True, False, False, False]
    x = filter_logits(logits, SamplingParams(top_p=0.1))
    assert torch.isfinite(x).tolist() == [True, False, False, False, False]
    assert torch.allclose(filter_logits(logits, SamplingParams(temperature=2.0)), (logits - 4) / 2)  # top at 0


def test_rows_do_not_depend_on_their_neighbours():
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    params = [SamplingParams(temperature=1.0, seed=s) for s in (1, 2, 3)] + [SamplingParams(temperature=0.0)] * 2
    gens = [make_generator(p, torch.device("cpu")) for p in params]
    together = sample_rows(logits, params, gens)
    alone = [sample_rows(logits[i:i + 1], [p], [make_generator(p, torch.device("cpu"))])[0]
             for i, p in enumerate(params)]
    assert together == alone
    assert together[3:] == logits[3:].argmax(-1).tolist()
    assert make_generator(SamplingParams(temperature=0.0), torch.device("cpu")) is None


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1.0195e-38, GREEDY_BELOW, 1e-37, 1e-30, 1e-6])
def test_every_accepted_temperature_is_numerically_safe(temperature):
    """Logits / T overflowed float32 for small T (inf, then NaN after softmax, then multinomial refused): now the
    shifted logits only go to -inf, and T below float32's smallest normal decodes greedily."""
    logits = torch.tensor([[60.0, 59.99, -70.0, 3.0], [-5.0, 80.0, 79.0, 0.0]])
    for extra in ({}, {"top_k": 2}, {"top_p": 0.5}):
        p = SamplingParams(temperature=temperature, seed=3, **extra)
        assert p.greedy == (temperature < GREEDY_BELOW)
        assert sample_rows(logits, [p, p], [make_generator(p, torch.device("cpu"))] * 2) == [0, 1]
        x = filter_logits(logits[0], p)
        assert x.max() == 0 and not torch.isnan(x).any()
        assert verify_drafts(logits.unsqueeze(1).repeat(1, 2, 1), [2, 1], [p, p],
                             [make_generator(p, torch.device("cpu"))] * 2) == [[0], [1, 1]]


def test_a_row_with_non_finite_logits_gets_an_error_and_no_other_row_does():
    torch.manual_seed(0)
    logits = torch.randn(4, 20)
    logits[1, 3] = float("nan")
    logits[2, 5] = float("inf")
    params = [SamplingParams(temperature=1.0, seed=1), SamplingParams(temperature=1.0, seed=2),
              SamplingParams(temperature=0.0), SamplingParams(temperature=0.0)]
    got = sample_rows(logits, params, [make_generator(p, torch.device("cpu")) for p in params])
    assert isinstance(got[1], SamplingError) and isinstance(got[2], SamplingError)
    assert "non-finite logits" in str(got[1])
    assert got[0] == sample_rows(logits[:1], params[:1], [make_generator(params[0], torch.device("cpu"))])[0]
    assert got[3] == int(logits[3].argmax())
    drafts = verify_drafts(torch.stack([logits, logits], 1), [0, 0, 0, 0], params,
                           [make_generator(p, torch.device("cpu")) for p in params])
    assert [isinstance(d, SamplingError) for d in drafts] == [False, True, True, False]


def test_any_integer_is_a_seed_taken_modulo_2_to_the_64():
    def draws(seed):
        p = SamplingParams(temperature=1.0, seed=seed)
        assert p.problems() == []
        g = make_generator(p, torch.device("cpu"))
        return [sample_rows(torch.zeros(1, 1000), [p], [g])[0] for _ in range(8)]

    assert draws(-1) == draws(2**64 - 1) and draws(5) == draws(5 + 3 * 2**64) == draws(5 - 2**64)
    assert draws(5) != draws(6)
    assert SamplingParams(seed=2.0).problems() == [("seed", "seed must be an integer, got 2.0")]


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    p = SamplingParams(temperature=1.0, seed=0)
    g = make_generator(p, torch.device("cpu"))
    counts = torch.bincount(torch.tensor([sample_rows(logits, [p], [g])[0] for _ in range(2000)]), minlength=3)
    assert abs(counts[0] / 2000 - 0.7) < 0.04 and abs(counts[2] / 2000 - 0.1) < 0.03


@pytest.fixture(scope="module")
def tok(trained_run):
    return Tokenizer.load(trained_run / "tokenizer.json")


def feed(asm: TextAssembler, ids: list[int]) -> list[str]:
    return [asm.add(t) for t in ids]


def test_text_assembles_exactly_and_waits_for_whole_characters(tok):
    text = "Thou art — más fair than 🌞, said she.\nAnd then"
    ids = tok.encode(text)
    asm = TextAssembler(tok)
    parts = feed(asm, ids)
    assert "".join(parts) + asm.flush() == text
    assert all("\ufffd" not in p for p in parts)  # a split emoji or accent is never shown half-done


@pytest.mark.parametrize("stop", ["fair", "n 🌞", "e.\nA", "than 🌞, said she.\nAnd then!"])
def test_stop_strings_are_cut_and_never_leak(tok, stop):
    text = "Thou art — más fair than 🌞, said she.\nAnd then"
    asm = TextAssembler(tok, ["unused", stop])
    out = []
    for t in tok.encode(text):
        out.append(asm.add(t))
        if asm.stopped:
            break
    shown = "".join(out) + asm.flush()
    if stop in text:
        assert asm.stopped and shown == text[:text.index(stop)]
    else:
        assert not asm.stopped and shown == text
    # nothing shown along the way was later taken back
    assert all(stop not in "".join(out[:i + 1]) for i in range(len(out)))


def test_chat_template():
    prompt = render_chat([("system", "Be brief."), ("user", "Hi!"), ("assistant", "Hello."), ("user", "Bye\n")])
    assert prompt == "<|system|>\nBe brief.\n<|user|>\nHi!\n<|assistant|>\nHello.\n<|user|>\nBye\n<|assistant|>\n"
    assert render_chat([("developer", "x")]).startswith("<|system|>\nx\n")
    assert CHAT_STOP == "\n<|"
    with pytest.raises(ValueError, match="unknown role"):
        render_chat([("tool", "x")])

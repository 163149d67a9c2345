"""A model's own tokenizer: its special ids from the files transformers writes, kept through save and load, and
read by transformers again; turnout's own layout unchanged."""

from __future__ import annotations

import json
import shutil

import pytest

from turnout.data import DataError, Tokenizer, prepare_dataset
from turnout.data.special_tokens import TURNOUT

from ..conftest import CHATML, write_foreign_tokenizer


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    write_foreign_tokenizer(folder)
    return folder


def test_special_ids_come_from_the_tokenizer_config(foreign):
    tok = Tokenizer.load(foreign)
    sp = tok.specials
    assert (sp.eos_id, sp.bos_id, sp.pad_id, sp.stops) == (2, 1, None, (2,))
    assert sp.add_bos and sp.chat_template == CHATML and not tok.own
    assert tok.frame(tok.encode("Hello")) == [1, *tok.encode("Hello")]
    assert 2 not in tok.encode("</s> and <|im_end|>")  # text never becomes a special id
    assert tok.encode_special("<|im_start|>user\nhi<|im_end|>")[0] == 3


def test_generation_and_model_configs_add_stop_ids(foreign, tmp_path):
    shutil.copytree(foreign, tmp_path, dirs_exist_ok=True)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 4], "pad_token_id": 0}))
    sp = Tokenizer.load(tmp_path).specials
    assert sp.stops == (2, 4) and sp.pad_id == 0
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 9999]}))
    with pytest.raises(DataError, match=r"generation_config.json: eos_token_id must be token ids in \[0, 900\)"):
        Tokenizer.load(tmp_path)


def test_save_and_load_keep_everything_and_transformers_reads_it(foreign, tmp_path):
    from transformers import AutoTokenizer

    tok = Tokenizer.load(foreign)
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path)
    assert again == tok and again.specials == tok.specials
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert (hf.bos_token, hf.eos_token) == ("<s>", "</s>")
    assert hf("Hello there").input_ids == tok.frame(tok.encode("Hello there"))
    rendered = hf.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_tokenizer_that_names_no_eos_is_refused_naming_the_file(foreign, tmp_path):
    shutil.copy(foreign / "tokenizer.json", tmp_path)
    with pytest.raises(DataError, match=r"tokenizer.json: not a turnout tokenizer, and no tokenizer_config.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end|>"}))
    with pytest.raises(DataError, match=r"tokenizer_config.json: eos_token '<\|end\|>' is not in the tokenizer"):
        Tokenizer.load(tmp_path)


def test_turnout_tokenizers_keep_their_layout(shakespeare_tok, tmp_path):
    assert shakespeare_tok.specials == TURNOUT and shakespeare_tok.own
    shakespeare_tok.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]
    assert shakespeare_tok.frame([5, 6]) == [5, 6]


def test_data_encoded_with_the_models_tokenizer(foreign, tmp_path):
    tok = Tokenizer.load(foreign)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in ["first document", "second one"] * 50))
    ds = prepare_dataset([corpus], vocab_size=1024, cache_dir=tmp_path / "cache", val_fraction=0.1, log=None,
                         tokenizer=tok)
    assert ds.tokenizer == tok and ds.meta["tokenizer"] == "given"
    doc = tok.frame(tok.encode("first document")) + [tok.eos_id]
    assert ds.train_tokens[:len(doc)].tolist() == doc
    trained = prepare_dataset([corpus], vocab_size=1024, cache_dir=tmp_path / "cache", val_fraction=0.1, log=None)
    assert trained.path != ds.path and trained.tokenizer.own  # another tokenizer, another cache entry
    with pytest.raises(DataError, match="the tokenizer has 900 tokens and the model's vocab_size is 512"):
        prepare_dataset([corpus], vocab_size=512, cache_dir=tmp_path / "cache", log=None, tokenizer=tok)

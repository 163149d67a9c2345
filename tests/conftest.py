"""Suite-wide setup: one tokenised-data cache per test session, offline Hugging Face, quiet DCP warnings."""

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("data-cache")
    old = os.environ.get("TURNOUT_DATA_CACHE")
    os.environ["TURNOUT_DATA_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TURNOUT_DATA_CACHE", None)
    else:
        os.environ["TURNOUT_DATA_CACHE"] = old


@pytest.fixture
def one_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread is faster and steadier (OpenMP threads on a
    busy box turn microseconds into seconds). Test modules opt in with pytest.mark.usefixtures("one_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_foreign_tokenizer(folder, vocab_size: int = 900, chat_template: str | None = CHATML):
    """A model's own tokenizer as transformers saves it, not turnout's layout: Llama-style <unk> <s> </s> at ids
    0-2 with bos put first by its post-processor, ChatML turn markers at 3-4, a chat template; returns it."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from turnout.data import load_shakespeare

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([d.text for d in load_shakespeare()][:300], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat_template:
        hf.chat_template = chat_template
    hf.save_pretrained(folder)
    return hf


@pytest.fixture(scope="session")
def foreign_hf(tmp_path_factory):
    """A transformers DeepseekV3ForCausalLM (the debug preset's shape, random weights, no MTP tensors) saved with
    its own tokenizer, which ends a turn at </s> or <|im_end|>: what a user brings."""
    import json

    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from turnout.model.args import ModelArgs

    folder = tmp_path_factory.mktemp("foreign-hf")
    write_foreign_tokenizer(folder)
    cfg = DeepseekV3Config(**ModelArgs.preset("debug").to_hf_config_dict())
    cfg.bos_token_id, cfg.eos_token_id = 1, 2
    torch.manual_seed(0)
    DeepseekV3ForCausalLM(cfg).save_pretrained(folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": [2, 4]}))
    return folder

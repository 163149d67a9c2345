"""Which ids of a tokenizer end text, begin it and pad it, and how prompts are framed.

turnout's own tokenizers put <|eos|>, <|bos|>, <|pad|> at ids 0, 1, 2 and need nothing else. A model's own
tokenizer (a Llama's, a Qwen's, a DeepSeek release's) says so in the files transformers writes beside
tokenizer.json: `tokenizer_config.json` (bos/eos/pad token, add_bos_token, chat_template),
`chat_template.jinja`, `generation_config.json` and `config.json` (bos/eos/pad token ids; eos may be a list: every
id that ends a generation). Those are read here, and `config_json` writes the one file that carries it all on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import tokenizers

from turnout.errors import one_line

from .errors import DataError

TOKENIZER_CONFIG = "tokenizer_config.json"
EOS, BOS, PAD = "<|eos|>", "<|bos|>", "<|pad|>"
TURNOUT_LAYOUT = (EOS, BOS, PAD)  # ids 0, 1, 2 of every tokenizer turnout trains


@dataclass(frozen=True)
class SpecialTokens:
    """The special ids a model and its tokenizer agree on."""

    eos_id: int  # ends every document: the separator in training data, the end of a generation
    bos_id: int | None = None
    pad_id: int | None = None
    stop_ids: tuple[int, ...] = ()  # every id that ends a generation, eos_id first
    add_bos: bool = False  # the model was trained with bos before each document: prompts and data get it too
    chat_template: str | None = None  # the model's jinja chat template; None: turnout's plain-text roles
    source: str = field(default="turnout", compare=False)  # where these came from, for messages and inspect

    @property
    def stops(self) -> tuple[int, ...]:
        return self.stop_ids or (self.eos_id,)


TURNOUT = SpecialTokens(eos_id=0, bos_id=1, pad_id=2, stop_ids=(0,))


def is_turnout_layout(tok: tokenizers.Tokenizer) -> bool:
    return all(tok.token_to_id(name) == i for i, name in enumerate(TURNOUT_LAYOUT))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not readable JSON ({one_line(e)})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a JSON object")
    return d


def _token_id(tok: tokenizers.Tokenizer, value, where: str, key: str) -> int | None:
    """The id of a token given as tokenizer_config.json gives it: a string, {"content": ...} or null."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: {key} must be a token string, got {value!r}")
    i = tok.token_to_id(value)
    if i is None:
        raise DataError(f"{where}: {key} {value!r} is not in the tokenizer's vocabulary")
    return i


def _ids(value, where: str, key: str, vocab: int) -> list[int]:
    """A config's token id field as a list (an int, a list of ints, or null)."""
    values = [] if value is None else value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < vocab:
            raise DataError(f"{where}: {key} must be token ids in [0, {vocab}), got {value!r}")
    return values


def read_special_tokens(folder: Path, tok: tokenizers.Tokenizer) -> SpecialTokens:
    """The special tokens of `tok` (loaded from folder/tokenizer.json) from the files beside it.

    The tokenizer's own config names the tokens; the model's generation and model configs add ids that also end
    a generation. Raises DataError naming the file when they disagree with the vocabulary or name no eos."""
    cfg_path = folder / TOKENIZER_CONFIG
    cfg = _read_json(cfg_path)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    ids = {k: _token_id(tok, cfg.get(f"{k}_token"), str(cfg_path), f"{k}_token") for k in ("eos", "bos", "pad")}
    stops = [ids["eos"]] if ids["eos"] is not None else []
    stops += [i for i in _ids(cfg.get("stop_token_ids"), str(cfg_path), "stop_token_ids", vocab) if i not in stops]
    for name in ("generation_config.json", "config.json"):
        side = _read_json(folder / name)
        for key in ("eos", "bos", "pad"):
            found = _ids(side.get(f"{key}_token_id"), str(folder / name), f"{key}_token_id", vocab)
            if key == "eos":
                stops += [i for i in found if i not in stops]
            if ids[key] is None and found:
                ids[key] = found[0]
    if ids["eos"] is None:
        raise DataError(f"{folder / 'tokenizer.json'}: not a turnout tokenizer, and no {TOKENIZER_CONFIG}, "
                        "generation_config.json or config.json beside it names its end-of-text token (eos_token)")
    template = cfg.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if template is not None and not isinstance(template, str):
        raise DataError(f"{cfg_path}: chat_template must be a string")
    add_bos = cfg.get("add_bos_token")
    if not isinstance(add_bos, bool):  # unsaid: whether the tokenizer's own post-processor puts bos first
        probe = tok.encode("a", add_special_tokens=True).ids
        add_bos = ids["bos"] is not None and bool(probe) and probe[0] == ids["bos"]
    return SpecialTokens(eos_id=ids["eos"], bos_id=ids["bos"], pad_id=ids["pad"], stop_ids=tuple(stops),
                         add_bos=add_bos and ids["bos"] is not None, chat_template=template, source=str(cfg_path)
                         if cfg else str(folder))


def config_json(tok: tokenizers.Tokenizer, sp: SpecialTokens) -> dict:
    """tokenizer_config.json for `sp`: what transformers' AutoTokenizer reads, and what read_special_tokens reads
    back to the same SpecialTokens (generation stops beyond eos ride as stop_token_ids)."""
    name = lambda i: None if i is None else tok.id_to_token(i)  # noqa: E731
    d = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name(sp.bos_id), "eos_token": name(sp.eos_id),
         "pad_token": name(sp.pad_id), "add_bos_token": sp.add_bos, "model_max_length": 1 << 30,
         "clean_up_tokenization_spaces": False}
    if len(sp.stops) > 1:
        d["stop_token_ids"] = list(sp.stops)
    if sp.chat_template is not None:
        d["chat_template"] = sp.chat_template
    return d

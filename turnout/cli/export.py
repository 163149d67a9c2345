"""`turnout export RUN_OR_CHECKPOINT --hf OUT_DIR`: an HF DeepseekV3 directory any stack can load."""

from __future__ import annotations

import argparse
from pathlib import Path

from turnout import atomic
from turnout.config import ConfigError
from turnout.report.rundir import TOKENIZER

HELP = "write a checkpoint as an HF DeepseekV3 directory (config.json, safetensors, tokenizer) for transformers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a run folder (its newest good checkpoint) or a checkpoint folder")
    p.add_argument("--hf", required=True, metavar="OUT_DIR", help="where to write the HF directory")


def tokenizer_config(tokenizer) -> dict:
    """What transformers' AutoTokenizer needs beside tokenizer.json."""
    tok = tokenizer._tok if hasattr(tokenizer, "_tok") else None
    name = (lambda i: tok.id_to_token(i)) if tok is not None else (lambda i: None)
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name(tokenizer.bos_id),
            "eos_token": name(tokenizer.eos_id), "pad_token": name(tokenizer.pad_id),
            "model_max_length": 1 << 30, "clean_up_tokenization_spaces": False}


def export_hf(source: Path, out: Path) -> Path:
    """Load the newest good checkpoint under `source` and write `out` (model, tokenizer, provenance); returns
    the checkpoint folder it exported (a newer one that fails verification is skipped, and said on stderr)."""
    from turnout.ckpt.restore import load_model
    from turnout.data import Tokenizer
    from turnout.model import save_pretrained

    model, manifest, folder = load_model(source)
    save_pretrained(model, out)
    # Each file lands whole or not at all: an export killed half-way never leaves a torn tokenizer or config.
    tok_path = folder / TOKENIZER
    if tok_path.is_file():
        atomic.write_bytes(out / TOKENIZER, tok_path.read_bytes())
        tok = Tokenizer.load(tok_path)
        atomic.write_json(out / "tokenizer_config.json", tokenizer_config(tok))
        atomic.write_json(out / "generation_config.json",
                          {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id})
    # provenance: which run, step and target produced these weights (parity certificates refer to it)
    atomic.write_json(out / "turnout_checkpoint.json",
                      {"source": str(folder), "step": manifest.step, "samples": manifest.samples,
                       "target": manifest.target, "world_size": manifest.world_size,
                       "torch_version": manifest.torch_version})
    return folder


def run(args: argparse.Namespace) -> int:
    source, out = Path(args.source), Path(args.hf)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ConfigError(f"--hf {out}: exists and is not an HF model directory; refusing to overwrite it")
    folder = export_hf(source, out)
    print(f"exported {folder} (step {folder.name.split('-')[-1].lstrip('0') or '0'}) -> {out}")
    return 0

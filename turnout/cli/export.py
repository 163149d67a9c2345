"""`turnout export RUN_OR_CHECKPOINT --hf OUT_DIR`: an HF DeepseekV3 directory any stack can load."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from turnout import atomic
from turnout.config import ConfigError
from turnout.report.rundir import TOKENIZER

HELP = "write a checkpoint as an HF DeepseekV3 directory (config.json, safetensors, tokenizer) for transformers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a run folder (its newest good checkpoint) or a checkpoint folder")
    p.add_argument("--hf", required=True, metavar="OUT_DIR", help="where to write the HF directory")


def export_hf(source: Path, out: Path) -> Path:
    """Load the newest good checkpoint under `source` and write `out` (model, tokenizer, provenance); returns
    the checkpoint folder it exported (a newer one that fails verification is skipped, and said on stderr)."""
    from turnout.ckpt.restore import load_model
    from turnout.data import Tokenizer
    from turnout.model import save_pretrained

    model, manifest, folder = load_model(source)
    tok_path = folder / TOKENIZER
    tok = Tokenizer.load(folder) if tok_path.is_file() else None
    if tok is not None:  # config.json says what the tokenizer says (ModelArgs' defaults are DeepSeek's ids)
        stops = list(tok.specials.stops)
        model.args = dataclasses.replace(model.args, bos_token_id=tok.bos_id, pad_token_id=tok.pad_id,
                                         eos_token_id=stops if len(stops) > 1 else tok.eos_id)
    save_pretrained(model, out)
    # Each file lands whole or not at all: an export killed half-way never leaves a torn tokenizer or config.
    if tok is not None:
        atomic.write_bytes(out / TOKENIZER, tok_path.read_bytes())
        atomic.write_json(out / "tokenizer_config.json", tok.config())
        atomic.write_json(out / "generation_config.json", {"bos_token_id": tok.bos_id, "pad_token_id": tok.pad_id,
                                                           "eos_token_id": model.args.eos_token_id})
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

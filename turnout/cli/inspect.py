"""`turnout inspect PATH`: what a model folder holds, without loading its weights.

For an HF DeepseekV3 directory or a turnout run/checkpoint folder: the architecture, parameter counts (all and
active per token), the dtypes stored, MTP declared and present, the tokenizer and its special tokens, bytes of
latent KV cache per token, and which targets here would train or serve it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = ("describe a model folder (HF directory or turnout run/checkpoint) without loading it: architecture, "
        "parameters, dtypes, MTP, tokenizer, KV cache per token, the targets that accept it")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="an HF DeepseekV3 directory, a turnout run folder (its newest "
                   "good checkpoint) or a checkpoint folder")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


# safetensors' dtype names -> torch's, so both kinds of folder read alike
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "BF16": "bfloat16", "F16": "float16",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32"}


def _tokenizer(folder: Path, vocab_size: int) -> dict:
    from turnout.data import DataError, Tokenizer

    if not (folder / "tokenizer.json").is_file():
        return {"present": False}
    try:
        tok = Tokenizer.load(folder)
    except DataError as e:
        return {"present": True, "usable": False, "problem": str(e)}
    sp = tok.specials
    names = dict(zip(("bos", "eos", "pad"), tok.token_names(sp.bos_id, sp.eos_id, sp.pad_id)))
    return {"present": True, "usable": True, "own": "turnout" if tok.own else "the model's",
            "vocab_size": tok.vocab_size, "fits": tok.vocab_size <= vocab_size, "special": names,
            "stop_ids": list(sp.stops), "add_bos": sp.add_bos, "chat_template": sp.chat_template is not None}


def _targets(params: int) -> list[dict]:
    """Each target present here: would it train the model (its refusals), and serve it."""
    from turnout.backend import get_backend, known_targets
    from turnout.config import Config

    cfg, out = Config(), []
    for spec in known_targets():
        b = get_backend(spec)
        ok, why = b.availability()
        if not ok:
            continue
        want = b.compute_dtype_name(cfg)
        serve_err = b.probe_dtypes().get(want)
        total = b.memory_stats().get("total", 0)
        weights = params * (2 if want in ("bf16", "fp16") else 4)
        if serve_err is None and total and weights > total:
            serve_err = f"{weights / 2**30:.1f} GiB of {want} weights exceed its {total / 2**30:.1f} GiB"
        out.append({"target": spec, "dtype": want, "train": b.validate(cfg, param_count=params),
                    "serve": [] if serve_err is None else [f"cannot run {want}: {serve_err}"]})
    return out


def describe(path: Path) -> dict:
    """Everything `turnout inspect` shows, as a JSON-ready dict; CheckpointError when the folder is unusable."""
    from turnout.ckpt import read_manifest, resolve_checkpoint
    from turnout.ckpt.dcp_reader import read_dcp_metadata
    from turnout.ckpt.restore import args_from_manifest
    from turnout.errors import CheckpointError
    from turnout.model.flops import mtp_params, param_counts
    from turnout.model.hf import SafetensorsReader, load_config, pretrained_args
    from turnout.train.init import is_hf_dir

    if not path.exists():
        raise CheckpointError(f"{path}: no such model folder")
    if is_hf_dir(path):
        args, declared = pretrained_args(path), load_config(path).mtp_depth
        raw = json.loads((path / "config.json").read_text())
        dtypes = {_SAFETENSORS_DTYPES.get(k, k): n for k, n in SafetensorsReader(path).stored_dtypes().items()}
        folder, info = path, {"kind": "hf", "architectures": raw.get("architectures"),
                              "quantization": (raw.get("quantization_config") or {}).get("quant_method")}
    else:
        folder = resolve_checkpoint(path)  # verifies every file against the manifest
        m = read_manifest(folder)
        args = args_from_manifest(m, str(folder))
        declared = args.mtp_depth
        with open(folder / ".metadata", "rb") as f:
            meta = read_dcp_metadata(f, str(folder / ".metadata"))
        dtypes: dict[str, int] = {}
        for key, md in meta.state_dict_metadata.items():
            if key.startswith("model.") and hasattr(md, "properties"):
                name = str(md.properties.dtype).replace("torch.", "")
                dtypes[name] = dtypes.get(name, 0) + 1
        info = {"kind": "checkpoint", "checkpoint": str(folder), "step": m.step, "samples": m.samples,
                "trained_on": m.target, "world_size": m.world_size, "torch_version": m.torch_version,
                "mesh": m.extra.get("mesh")}
    total, active = param_counts(args)
    mtp = mtp_params(args) if args.mtp_depth else 0
    per_token = (args.kv_lora_rank + args.qk_rope_head_dim) * args.n_layers
    return {**info, "path": str(path), "model": args.to_dict(),
            "params": {"total": total, "active": active, "mtp": mtp},
            "mtp": {"declared": declared, "present": args.mtp_depth}, "dtypes": dtypes,
            "kv_cache_bytes_per_token": {"bf16": per_token * 2, "fp32": per_token * 4},
            "tokenizer": _tokenizer(folder, args.vocab_size),
            "targets": _targets(total + mtp)}


def _mesh(mesh: dict | None) -> str:
    """' (dp 2 x ep 2)' for an expert-parallel layout, '' otherwise."""
    return f" (dp {mesh['dp']} x ep {mesh['ep']})" if mesh and mesh.get("ep", 1) > 1 else ""


def _text(d: dict) -> str:
    a, p, t = d["model"], d["params"], d["tokenizer"]
    lines = [f"{d['path']}: " + (f"HF directory ({', '.join(d['architectures'] or ['?'])}"
                                 + (f", {d['quantization']} quantized" if d.get("quantization") else "") + ")"
                                 if d["kind"] == "hf" else
                                 f"turnout checkpoint {Path(d['checkpoint']).name}: step {d['step']}, "
                                 f"{d['samples']:,} samples, trained on {d['trained_on']} x{d['world_size']}"
                                 f"{_mesh(d.get('mesh'))}, "
                                 f"torch {d['torch_version']}")]
    lines.append(f"  architecture  dim {a['dim']}, {a['n_layers']} layers ({a['n_dense_layers']} dense), "
                 f"{a['n_heads']} heads; MLA q_lora {a['q_lora_rank']}, kv_lora {a['kv_lora_rank']}, rope "
                 f"{a['qk_rope_head_dim']} ({a['rope_type']}); vocab {a['vocab_size']}, context {a['max_seq_len']}")
    lines.append(f"  experts       {a['n_routed_experts']} routed + {a['n_shared_experts']} shared, top "
                 f"{a['n_activated_experts']} in {a['n_expert_groups']} groups (top {a['n_limited_groups']})")
    lines.append(f"  parameters    {p['total'] / 1e6:,.2f}M, {p['active'] / 1e6:,.2f}M active per token"
                 + (f", + {p['mtp'] / 1e6:,.2f}M in MTP" if p["mtp"] else ""))
    m = d["mtp"]
    lines.append(f"  MTP           {m['present']} module(s)" + (f" of {m['declared']} declared (the files hold "
                                                                 "no tensors for the rest)" if m["declared"] !=
                                                                 m["present"] else ""))
    lines.append("  stored        " + ", ".join(f"{n} {k} tensors" for k, n in sorted(d["dtypes"].items())))
    kv = d["kv_cache_bytes_per_token"]
    lines.append(f"  KV cache      {kv['bf16']:,} B/token in bf16, {kv['fp32']:,} B/token in fp32 (latent)")
    if not t["present"]:
        lines.append("  tokenizer     none beside the weights")
    elif not t["usable"]:
        lines.append(f"  tokenizer     not usable: {t['problem']}")
    else:
        sp = ", ".join(f"{k} {v!r}" for k, v in t["special"].items() if v is not None)
        lines.append(f"  tokenizer     {t['own']}, {t['vocab_size']:,} tokens"
                     + ("" if t["fits"] else f" (MORE than the model's {a['vocab_size']:,})")
                     + f"; {sp}; stops at {t['stop_ids']}" + ("; bos first" if t["add_bos"] else "")
                     + ("; own chat template" if t["chat_template"] else "; turnout's chat roles"))
    lines.append("  targets here: what each one's own checks accept (`turnout qualify` says whether to trust it)")
    for r in d["targets"]:
        train = "trains" if not r["train"] else "does not train (" + "; ".join(r["train"]) + ")"
        serve = "serves" if not r["serve"] else "does not serve (" + "; ".join(r["serve"]) + ")"
        lines.append(f"    {r['target']:<22} {r['dtype']}: {train}, {serve}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    d = describe(Path(args.path))
    print(json.dumps(d, indent=2) if args.json else _text(d))
    return 0

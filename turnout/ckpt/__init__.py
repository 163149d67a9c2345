"""Checkpoints: DCP shards that reshard on load, a manifest that rebuilds the model anywhere, atomic writes."""

from turnout.ckpt.manifest import Manifest, encode_rng, read_manifest, verify
from turnout.ckpt.store import Checkpointer, latest_checkpoint, list_checkpoints, load_state, resolve_checkpoint

__all__ = ["Checkpointer", "Manifest", "encode_rng", "latest_checkpoint", "list_checkpoints",
           "load_state", "read_manifest", "resolve_checkpoint", "verify"]

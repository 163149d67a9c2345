"""A checkpoint from someone else cannot run code: DCP metadata through a restricted unpickler, byte entries
through torch.load(weights_only=True), on every path that reads a checkpoint."""

import io
import pathlib
import pickle
import subprocess
import sys

import pytest
import torch

from turnout.ckpt import Checkpointer, Manifest
from turnout.ckpt.dcp_reader import read_dcp_metadata
from turnout.ckpt.manifest import write_manifest
from turnout.ckpt.restore import load_model
from turnout.errors import CheckpointError


class _Payload:
    """Unpickling this creates a file: what a crafted checkpoint would do instead of something worse."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _crafted(tmp_path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    """A real run's checkpoint whose .metadata is replaced by the payload, manifest hashes rewritten to match."""
    from turnout.ckpt.manifest import read_manifest
    from turnout.model.args import ModelArgs
    from turnout.model.transformer import Transformer

    from turnout.data import Tokenizer

    tok = Tokenizer.train(["to be or not to be, that is the question"], 300).save(tmp_path / "tokenizer.json")
    args = ModelArgs.preset("debug", vocab_size=300)
    model = Transformer(args)
    opt = torch.optim.AdamW(model.parameters())
    manifest = Manifest(step=1, samples=4, model_args=args.to_dict(), config={}, target="cpu", world_size=1)
    folder = Checkpointer(tmp_path / "run", keep=2, attach={"tokenizer.json": tok}).save(model, opt, manifest)
    (folder / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    write_manifest(folder, read_manifest(folder))  # the attacker rewrites the hashes: verification passes
    return folder


def test_the_payload_would_run_under_plain_pickle(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()  # so the refusals below are the reader's doing, not a dud payload


def test_crafted_metadata_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    folder = _crafted(tmp_path, marker)
    with pytest.raises(CheckpointError, match="pathlib.Path.touch"):
        load_model(folder)
    with pytest.raises(CheckpointError, match="refused without running it"):
        read_dcp_metadata(io.BytesIO((folder / ".metadata").read_bytes()), "x")
    assert not marker.exists()


@pytest.mark.parametrize("command", [["export", "{run}", "--hf", "{tmp}/hf"],
                                     ["generate", "--model", "{run}", "--prompt", "a", "--max-tokens", "2"]])
def test_cli_readers_refuse_it_in_one_line(tmp_path, command):
    marker = tmp_path / "ran"
    folder = _crafted(tmp_path, marker)
    argv = [a.format(run=folder.parent.parent, tmp=tmp_path) for a in command]
    r = subprocess.run([sys.executable, "-m", "turnout", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "refused" in r.stderr
    assert not marker.exists()


def test_a_weights_only_entry_is_refused(tmp_path):
    from turnout.ckpt.dcp_reader import SafePlanner

    class _Item:
        class dest_index:
            fqn = "optim.param_groups.0.lr"

    buf = io.BytesIO()
    torch.save(_Payload(tmp_path / "ran"), buf)
    buf.seek(0)
    with pytest.raises(CheckpointError, match="weights-only"):
        SafePlanner().load_bytes(_Item, buf)
    assert not (tmp_path / "ran").exists()

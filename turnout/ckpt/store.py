"""Saving and loading training state with torch.distributed.checkpoint, atomically, keeping the last K.

Layout: `RUN/checkpoints/step-00000050/` holds DCP shards (`.metadata`, `__R_0.distcp`), `manifest.json`
and `tokenizer.json`. A checkpoint is written to `step-N.tmp/` and renamed only after every rank's shards and
the manifest are on disk, so a folder named `step-N` is complete by construction; anything else is refused.
DCP reshards at load time, so a checkpoint written by W ranks loads on any other number of ranks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from turnout.ckpt.dcp_reader import DCP_METADATA, SafePlanner, SafeReader, read_dcp_metadata
from turnout.ckpt.manifest import Manifest, read_manifest, verify, write_manifest
from turnout.errors import CheckpointError
from turnout.report.rundir import MANIFEST, RunDir

def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _single_process_ok():
    """DCP warns that it assumes one process when no process group is up; that is exactly what we mean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def checkpoint_dir(run_dir: Path) -> Path:
    return RunDir(run_dir).checkpoints


def step_dir(run_dir: Path, step: int) -> Path:
    return RunDir(run_dir).checkpoint(step)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every folder named like a finished checkpoint, oldest first (not yet verified)."""
    return RunDir(run_dir).checkpoint_folders()


def latest_checkpoint(run_dir: Path, *, before_step: int | None = None,
                      on_refused: Callable[[Path, list[str]], None] | None = None) -> Path | None:
    """The newest checkpoint that verifies (optionally with step < before_step); refused ones are reported."""
    for step, folder in reversed(list_checkpoints(run_dir)):
        if before_step is not None and step >= before_step:
            continue
        problems = verify(folder)
        if not problems:
            return folder
        if on_refused:
            on_refused(folder, problems)
    return None


def set_aside(folder: Path) -> Path:
    """Move a checkpoint that failed verification to `step-N.corrupt/` beside it: out of every listing, never
    counted toward `keep`, never deleted (what is wrong with it may be worth a look). Returns where it went."""
    dest = RunDir.set_aside_name(folder)
    os.replace(folder, dest)
    _fsync_dir(dest.parent)
    return dest


#: called with (folder as it was, where it was moved, its verification problems) for each checkpoint set aside
OnSetAside = Callable[[Path, Path, list[str]], None]


class Split(Protocol):
    """Weights split over ranks outside FSDP (expert parallelism): `params` names them, `sharded` wraps state
    entries of their shape as DTensors of the global shape so DCP writes each piece once and reshards it."""

    params: dict[str, torch.nn.Parameter]

    def sharded(self, names_to_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, split: Split | None) -> dict:
    """{"model": ..., "optim": ...} as DCP saves and loads it: FQN-keyed, split weights and their optimizer state
    as global DTensors (views of the local tensors, so a load writes through to them)."""
    opts = StateDictOptions(full_state_dict=False)
    msd, osd = get_state_dict(model, optimizer if optimizer is not None else [], options=opts)
    if split is not None:
        names = [n for n in split.params if n in msd]
        msd.update(split.sharded({n: msd[n] for n in names}))
        osd = {**osd, "state": dict(osd.get("state", {}))}  # new dicts: the optimizer's own keep plain tensors
        for n in names:
            st = osd["state"].get(n)
            if st:
                osd["state"][n] = {**st, **split.sharded({k: v for k, v in st.items() if isinstance(v, torch.Tensor)
                                                          and v.shape == split.params[n].shape})}
    return {"model": msd, "optim": osd} if optimizer is not None else {"model": msd}


def _unsplit(state: dict, split: Split) -> dict:
    """`state` (from `_state`) with the split entries plain again, their local shards, as set_state_dict expects
    (FSDP's own DTensors stay as they are)."""
    msd, osd = state["model"], state.get("optim", {})
    for n in split.params:
        if n in msd:
            msd[n] = msd[n].to_local()
        st = osd.get("state", {}).get(n, {})
        for k, v in st.items():
            if hasattr(v, "placements") and hasattr(v, "to_local"):
                st[k] = v.to_local()
    return state


class Checkpointer:
    """Writes and reads a run's checkpoints. All ranks call `save`/`load`/`newest`; rank 0 writes manifests,
    renames, and sets aside checkpoints that fail verification.

    `keep` counts verified checkpoints only: one that fails verification (found when resuming, rolling back or
    pruning) is moved to `step-N.corrupt/` and reported through `on_set_aside`, so a corrupt folder never stands
    in for a good one and is never silently deleted."""

    def __init__(self, run_dir: Path, keep: int = 3, async_save: bool = False,
                 attach: dict[str, Path] | None = None, on_set_aside: OnSetAside | None = None,
                 split: Split | None = None):
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.async_save = async_save
        self.attach = dict(attach or {})  # name in checkpoint -> file copied in (e.g. tokenizer.json)
        self.on_set_aside = on_set_aside
        self.split = split  # weights split over ranks outside FSDP (expert parallelism)
        self._pending: tuple[Future, Path, Manifest] | None = None
        self._good: set[str] = set()  # folder names written or verified by this process

    # ---- which checkpoints are good ------------------------------------------------------------------
    def _verified(self, folder: Path) -> bool:
        """Whether `folder` verifies (cached for what this process wrote or checked); rank 0 sets aside one that
        does not. Every rank reaches the same answer: they read the same files."""
        if folder.name in self._good:
            return True
        problems = verify(folder)
        if not problems:
            self._good.add(folder.name)
            return True
        if _rank() == 0 and folder.is_dir():
            dest = set_aside(folder)
            if self.on_set_aside:
                self.on_set_aside(folder, dest, problems)
        return False

    def newest(self, *, before_step: int | None = None) -> Path | None:
        """The newest verified checkpoint (optionally with step < before_step); failing ones on the way are set
        aside. All ranks call it together."""
        found = None
        for step, folder in reversed(list_checkpoints(self.run_dir)):
            if before_step is not None and step >= before_step:
                continue
            if self._verified(folder):
                found = folder
                break
        _barrier()  # rank 0's moves are done before any rank lists the folder again
        return found

    def holds(self, step: int) -> bool:
        """Whether a verified checkpoint of `step` is on disk (a corrupt one is set aside and does not count)."""
        folder = step_dir(self.run_dir, step)
        held = folder.is_dir() and self._verified(folder)
        _barrier()
        return held

    # ---- save ---------------------------------------------------------------------------------------
    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, manifest: Manifest) -> Path:
        """Save model + optimizer state at `manifest.step`; returns the final folder (complete once `wait` returns
        when async)."""
        self.wait()
        final = step_dir(self.run_dir, manifest.step)
        tmp = final.with_name(final.name + ".tmp")
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        state = _state(model, optimizer, self.split)
        if self.async_save:
            with _single_process_ok():
                fut = dcp.async_save(state, checkpoint_id=str(tmp))
            self._pending = (fut, tmp, manifest)
        else:
            with _single_process_ok():
                dcp.save(state, checkpoint_id=str(tmp))
            self._finalize(tmp, manifest)
        return final

    def wait(self) -> Path | None:
        """Finish a pending async save (no-op when none); returns its folder."""
        if self._pending is None:
            return None
        fut, tmp, manifest = self._pending
        self._pending = None
        with _single_process_ok():
            fut.result()
        return self._finalize(tmp, manifest)

    def _finalize(self, tmp: Path, manifest: Manifest) -> Path:
        final = tmp.with_name(tmp.name[: -len(".tmp")])
        _barrier()  # every rank's shards are written
        if _rank() == 0:
            for name, src in self.attach.items():
                if Path(src).is_file():
                    shutil.copyfile(src, tmp / name)
            write_manifest(tmp, manifest)
            if final.exists():  # a re-run of this step after a rollback replaces the old folder
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            self._good.add(final.name)
            self._prune()
        _barrier()
        return final

    def _prune(self) -> None:
        """Keep the newest `keep` verified checkpoints (rank 0): older verified ones are deleted, failing ones are
        set aside and not counted; stale `.tmp` folders of dead writers go too."""
        kept = 0
        for _, folder in reversed(list_checkpoints(self.run_dir)):
            if kept < self.keep:
                kept += self._verified(folder)
            elif self._verified(folder):  # beyond keep: deleted if good; a failing one is set aside instead
                shutil.rmtree(folder, ignore_errors=True)
                self._good.discard(folder.name)
        for p in RunDir(self.run_dir).partial_checkpoints():
            if self._pending is None or p != self._pending[1]:
                shutil.rmtree(p, ignore_errors=True)

    # ---- load ---------------------------------------------------------------------------------------
    def load(self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> Manifest:
        """Load a verified checkpoint into `model` (and `optimizer`), resharding to the current world size."""
        folder = Path(folder)
        problems = verify(folder)
        if problems:
            raise CheckpointError(problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
        manifest = read_manifest(folder)
        load_state(folder, model, optimizer, self.split)
        return manifest


def _dcp_load(state: dict, folder: Path) -> None:
    """dcp.load through the restricted metadata reader and weights-only planner (turnout.ckpt.dcp_reader): a
    crafted checkpoint is a one-line CheckpointError, never code run. The metadata is read once first, here,
    because DCP folds a reader's error into an AssertionError of its own."""
    with open(Path(folder) / DCP_METADATA, "rb") as f:
        read_dcp_metadata(f, str(Path(folder) / DCP_METADATA))
    with _single_process_ok():
        dcp.load(state, storage_reader=SafeReader(str(folder)), planner=SafePlanner())


def load_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
               split: Split | None = None) -> None:
    """DCP-load `model` (and optimizer) state in place from a checkpoint folder (no hash verification here),
    resharding to this process's layout."""
    opts = StateDictOptions(full_state_dict=False)
    state = _state(model, optimizer, split)
    _dcp_load(state, folder)
    state = _unsplit(state, split) if split is not None else state
    set_state_dict(model, optimizer if optimizer is not None else [], model_state_dict=state["model"],
                   optim_state_dict=state.get("optim", {}), options=opts)


def _say_refused(folder: Path, problems: list[str]) -> None:
    print(f"checkpoint {folder}: skipped, {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1
          else ""), file=sys.stderr)


def resolve_checkpoint(path: Path, on_refused: Callable[[Path, list[str]], None] | None = _say_refused) -> Path:
    """A checkpoint folder from either a run folder (newest good one) or a checkpoint folder itself. A newer
    checkpoint of a run that fails verification is passed over, and said (by default, one stderr line each),
    so a reader never falls back to an older checkpoint without saying which and why. Nothing is moved: a run's
    own training does that."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        problems = verify(path)
        if problems:
            raise CheckpointError(problems[0])
        return path
    if checkpoint_dir(path).is_dir():
        found = latest_checkpoint(path, on_refused=on_refused)
        if found is None:
            raise CheckpointError(f"{path}: no complete checkpoint passes verification")
        return found
    raise CheckpointError(f"{path}: neither a run folder nor a checkpoint folder")

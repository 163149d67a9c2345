"""Reading DCP checkpoints without running code from them.

torch.distributed.checkpoint keeps a checkpoint's index in `.metadata` as a pickle and reads it with
`pickle.load`, and its default planner loads non-tensor entries (an optimizer's param groups) with
`torch.load(weights_only=False)`: a folder from someone else could run anything on load. Here `.metadata` goes
through an unpickler that admits only the types DCP's own metadata is made of, and byte entries through
`torch.load(weights_only=True)`. A checkpoint that names anything else is refused, naming what it asked for.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element  # what DefaultLoadPlanner.load_bytes uses
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from turnout.errors import CheckpointError

DCP_METADATA = ".metadata"  # the index DCP writes beside the shards
_DCP = "torch.distributed.checkpoint.metadata"
#: (module, name) of everything a DCP `.metadata` pickle refers to (torch 2.4 .. 2.13)
_ALLOWED = frozenset({
    (_DCP, "Metadata"), (_DCP, "TensorStorageMetadata"), (_DCP, "BytesStorageMetadata"),
    (_DCP, "ChunkStorageMetadata"), (_DCP, "TensorProperties"), (_DCP, "MetadataIndex"), (_DCP, "StorageMeta"),
    (_DCP, "_MEM_FORMAT_ENCODING"), ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
})


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointError(f"checkpoint metadata refers to {module}.{name}, which DCP metadata never holds "
                              f"(a crafted checkpoint?); refused without running it")


def read_dcp_metadata(stream: io.BufferedIOBase, where: str) -> Metadata:
    """A `.metadata` pickle read through the restricted unpickler; anything else is a CheckpointError."""
    try:
        metadata = _MetadataUnpickler(stream).load()
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a truncated or garbled pickle raises many kinds of error
        raise CheckpointError(f"{where}: unreadable DCP metadata ({type(e).__name__}: {e})") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{where}: DCP metadata is a {type(metadata).__name__}, not a Metadata")
    return metadata


class SafeReader(FileSystemReader):
    """FileSystemReader whose metadata read admits only DCP's own types."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        name = DCP_METADATA if rank is None else f"__{rank}{DCP_METADATA}"
        path = self.fs.concat_path(self.path, name)
        with self.fs.create_stream(path, "rb") as f:
            metadata = read_dcp_metadata(f, str(path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner that loads byte entries (param groups, step counts) as plain data only."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as e:  # noqa: BLE001 - weights_only refuses with UnpicklingError and others
            raise CheckpointError(f"checkpoint entry {read_item.dest_index.fqn}: refused by the weights-only loader "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj

"""Disk offload for the block-by-block pipeline: the blocks not being calibrated wait on disk.

Memory then holds about one block plus the activations, whatever the depth, which is what
lets a model larger than the machine's memory go through calibration. The files are
accelerate's offload format (one memory-mapped file per tensor plus an index), so no
format of our own is involved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate.utils.offload import load_offloaded_weight, offload_state_dict
from torch import nn


class BlockOffloader:
    """Moves blocks between disk and a device; an offloaded block holds meta tensors only."""

    def __init__(self, folder: str | Path, blocks: list[nn.Module]):
        self.folder = Path(folder)
        self.blocks = blocks
        self.homes: dict[int, torch.device] = {}
        # Buffers left out of the state dict (e.g. rotary tables) are not written: they stay in memory.
        self.kept_buffers: dict[int, dict[str, torch.Tensor]] = {}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"cannot create the offload folder {self.folder} ({err}): pass a writable --offload-dir") from err

    def _block_folder(self, index: int) -> Path:
        return self.folder / f"block_{index:04d}"

    def is_offloaded(self, index: int) -> bool:
        return index in self.homes

    def offload(self, index: int) -> None:
        block = self.blocks[index]
        if self.is_offloaded(index):
            return
        state = {k: v.detach().cpu() for k, v in block.state_dict().items()}
        persistent = set(state)
        self.kept_buffers[index] = {name: b for name, b in block.named_buffers() if name not in persistent}
        target = self._block_folder(index)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        offload_state_dict(partial, state)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)  # a block folder exists only once all its tensors are written
        self.homes[index] = next(block.parameters()).device
        block.to("meta")

    def restore(self, index: int, device: torch.device | str | None = None) -> nn.Module:
        block = self.blocks[index]
        if not self.is_offloaded(index):
            return block
        device = torch.device(device) if device is not None else self.homes[index]
        folder = self._block_folder(index)
        index_file = folder / "index.json"
        if not index_file.is_file():
            raise FileNotFoundError(f"the offloaded block {index} is missing from {folder}: the offload folder was "
                                    "deleted or is on a disk that went away; rerun the quantization")
        entries = json.loads(index_file.read_text())
        state = {name: load_offloaded_weight(folder / f"{name}.dat", info) for name, info in entries.items()}
        block.to_empty(device=device)
        block.load_state_dict(state)
        for name, buffer in self.kept_buffers.pop(index, {}).items():
            owner, _, leaf = name.rpartition(".")
            (block.get_submodule(owner) if owner else block)._buffers[leaf] = buffer.to(device)
        del self.homes[index]
        shutil.rmtree(folder, ignore_errors=True)
        return block

    def restore_all(self) -> None:
        for index in sorted(self.homes):
            self.restore(index)

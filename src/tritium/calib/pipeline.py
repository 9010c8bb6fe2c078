"""The block-by-block calibration pipeline every calibrated method runs on.

Two activation streams walk the blocks in order:

* the *float* stream: block i's float output on the float stream's input, the
  reconstruction target ("quant_out" rule of TesseraQ: targets come from the float
  model's own chain, never from the quantized one);
* the *quantized* stream: the input block i sees once blocks 0..i−1 are quantized.

A method sees one block at a time (:class:`BlockContext`) and returns its quantized
weights; the pipeline writes them into the block, advances both streams, and
checkpoints the block atomically. Only the current block and the activations sit on
the compute device; the rest of the model stays where it was loaded (the CPU).

Resuming replays the finished blocks: the float stream through the float weights of a
freshly loaded model, then the checkpointed block state for the quantized stream.
Those are the same operations in the same order as the uninterrupted run, so the
result is identical. The checkpoint also records the pieces a run was made in (each
one's calibration seconds up to its last checkpoint), so a resumed run reports the
time of the whole run, not only of its last piece. One process at a time writes a
checkpoint folder (a lock file, :mod:`tritium.utils.runs`).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..models.adapters import DecoderLayout
from ..quant.grids import Grid, GroupLayout, QuantizedWeight, grid_from_dict, grid_to_dict
from ..utils.io import TEMPORARY_SUFFIX, atomic_write_bytes, atomic_write_json, temporary_prefix
from ..utils.progress import progress_bar
from .capture import (
    BlockInputs,
    CalibrationInputError,
    NonFiniteError,
    capture_block_inputs,
    check_calibration_ids,
    move_kwargs,
)

# Part of every run's fingerprint: raise it whenever a method's algorithm changes, so that
# blocks checkpointed by the old algorithm are never mixed into a resumed run.
# 2: AWQ's scale search (also TesseraQ's initialisation) scores the whole module's output.
CHECKPOINT_VERSION = 2


@dataclass
class PipelineSettings:
    """How the pipeline runs, whatever the method."""

    device: str | None = None  # None or "auto": cuda when available, else cpu
    forward_batch_size: int = 8  # samples per block forward when advancing the streams
    checkpoint_dir: str | None = None  # a folder: checkpoint after each block and resume from it
    # Keep the activation streams in CPU memory and move one batch at a time to the device:
    # device memory then holds one block plus a batch, at the cost of transfers.
    offload_activations: bool = False
    # A folder: the blocks not being calibrated wait on disk there, so CPU memory holds about one
    # block plus the activations whatever the depth; they all come back when the run ends.
    offload_dir: str | None = None
    # With no offload_dir: put the blocks on disk anyway (a temporary folder, removed afterwards) when
    # less memory is available than the blocks themselves take, since the walk then has no room left
    # for its per-block copies and would run the machine out of memory.
    auto_offload: bool = True
    seed: int = 0
    # Weight + activation quantization, the one switch: full linear name -> the activation grid of its input.
    # While a block is calibrated and while the quantized stream goes through it, its selected linears
    # fake-quantize their inputs (TesseraQ's weight-activation recipe): GPTQ's Hessians and AWQ's and
    # TesseraQ's losses see quantized inputs, and the next block's inputs come from the quantized block.
    # The float stream and its targets stay float. None or empty: weights only.
    activation_grids: dict | None = None


def memory_available_bytes() -> int | None:
    """Memory the kernel can hand out without swapping (Linux's MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def blocks_bytes(layout: DecoderLayout) -> int:
    return sum(t.numel() * t.element_size() for block in layout.blocks
               for t in [*block.parameters(), *block.buffers()] if not t.is_meta)


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def finite_guard(block: nn.Module, block_name: str, block_index: int, what: str):
    """Raise :class:`NonFiniteError` at the first submodule whose output is NaN/Inf, naming it."""

    def hook(name):
        def check(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(out, Tensor) and out.is_floating_point() and not torch.isfinite(out).all():
                raise NonFiniteError(
                    f"non-finite values (NaN/Inf) in the output of {block_name}.{name} (block {block_index}, "
                    f"layer {name}) while {what}: the weights or activations overflowed; check the checkpoint "
                    "and the calibration data, or run in float32"
                )
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in block.named_modules() if n and not list(m.children())]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def block_forward(block: nn.Module, hidden: Tensor, kwargs: dict, batch_size: int, device: torch.device,
                  out: Tensor | None = None) -> Tensor:
    """Run ``block`` over ``hidden`` in batches; the result lives where ``hidden`` lives."""
    out = torch.empty_like(hidden) if out is None else out
    for start in range(0, hidden.shape[0], batch_size):
        batch = hidden[start:start + batch_size].to(device)
        result = block(batch, **kwargs)
        result = result[0] if isinstance(result, tuple) else result
        out[start:start + batch_size] = result.to(out.device)
    return out


@dataclass
class BlockContext:
    """What a method sees of one block."""

    index: int
    name: str  # full module name, e.g. "model.layers.3"
    block: nn.Module  # on ``device``
    linears: dict[str, nn.Linear]  # selected linears of this block, by short name ("mlp.up_proj")
    quant_inputs: Tensor  # [n, L, H]: inputs from the already-quantized blocks
    float_inputs: Tensor  # [n, L, H]: inputs along the float chain
    float_targets: Tensor  # [n, L, H]: the float block's outputs on float_inputs
    kwargs: dict  # the block's call arguments, on ``device``
    device: torch.device
    forward_batch_size: int
    seed: int  # a per-block seed, so a resumed run draws the same random numbers
    scale_groups: list = field(default_factory=list)  # DecoderLayout.scale_groups (producer → consumers)
    norm_weight_offset: float = 0.0  # 1.0 for Gemma's (1 + w) norms

    def forward(self, hidden: Tensor, what: str = "running the block") -> Tensor:
        with torch.no_grad(), finite_guard(self.block, self.name, self.index, what):
            return block_forward(self.block, hidden, self.kwargs, self.forward_batch_size, self.device)

    def forward_observed(self, hidden: Tensor, names, make_hook, what: str, with_kwargs: bool = False,
                         before: bool = False) -> None:
        """Run ``hidden`` through the block with ``make_hook(name)`` as a forward hook on each
        named submodule (``with_kwargs``: the hook also gets the call's keyword arguments);
        the hooks are removed however the pass ends. ``before``: a forward pre-hook, called
        ``hook(module, args[, kwargs])`` ahead of every other, so it sees the module's input
        as it arrives, before an activation quantizer rounds it; a forward hook sees it rounded."""
        def register(module, hook):
            if before:
                return module.register_forward_pre_hook(hook, prepend=True, with_kwargs=with_kwargs)
            return module.register_forward_hook(hook, with_kwargs=with_kwargs)

        handles = [register(self.block.get_submodule(name), make_hook(name)) for name in names]
        try:
            self.forward(hidden, what)
        finally:
            for handle in handles:
                handle.remove()

    def check_finite(self, value: Tensor, what: str, layer: str | None = None) -> None:
        if not torch.isfinite(value).all():
            where = f"layer {layer} of " if layer else ""
            raise NonFiniteError(
                f"non-finite {what} in {where}block {self.index} ({self.name}): lower the learning rate, "
                "check the calibration data, or run in float32"
            )

    def locate_non_finite(self, hidden: Tensor, what: str) -> None:
        """Re-run ``hidden`` under the guard so a NaN is reported with the layer that made it."""
        self.forward(hidden, what)


@dataclass
class BlockResult:
    weights: dict[str, QuantizedWeight]  # by short name; the pipeline writes them into the block
    stats: dict = field(default_factory=dict)


BlockMethod = Callable[[BlockContext], BlockResult]


# --------------------------------------------------------------------------- checkpoints


def _qweight_to_state(q: QuantizedWeight) -> dict:
    layout = q.layout
    return {"codes": q.codes, "scale": q.scale, "zero": q.zero, "shift": q.shift, "grid": grid_to_dict(q.grid),
            "layout": [layout.out_features, layout.in_features, layout.group_size, layout.per_tensor]}


def _qweight_from_state(state: dict, grid: Grid) -> QuantizedWeight:
    out_f, in_f, gs, per_tensor = state["layout"]
    # Each weight records its own grid (mixed precision); checkpoints from before that hold the run's one grid.
    grid = grid_from_dict(state["grid"]) if "grid" in state else grid
    return QuantizedWeight(state["codes"], state["scale"], grid, GroupLayout(out_f, in_f, gs, bool(per_tensor)),
                           zero=state["zero"], shift=state["shift"])


def _block_file(folder: Path, index: int) -> Path:
    return folder / f"block_{index:04d}.pt"


def save_block_checkpoint(folder: Path, index: int, block: nn.Module, result: BlockResult, fingerprint: str,
                          pieces: list[dict] | None = None) -> None:
    """Write block ``index``'s state, then mark it finished; each file is replaced atomically.
    ``pieces``: the run's pieces so far (see :func:`load_pieces`), the current one last."""
    buffer = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, "fingerprint": fingerprint,
                "block_state": {k: v.detach().cpu() for k, v in block.state_dict().items()},
                "weights": {n: _qweight_to_state(q) for n, q in result.weights.items()},
                "stats": json.dumps(result.stats, default=float)}, buffer)
    atomic_write_bytes(_block_file(folder, index), buffer.getvalue())
    atomic_write_json(folder / "progress.json", {"version": CHECKPOINT_VERSION, "fingerprint": fingerprint,
                                                 "finished_blocks": index + 1, "pieces": pieces or []})


def load_progress(folder: Path, fingerprint: str) -> int:
    """Blocks already finished in ``folder`` for this exact run (0 when starting fresh)."""
    path = folder / "progress.json"
    if not path.is_file():
        return 0
    try:
        progress = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CalibrationInputError(f"checkpoint {path} is corrupt ({err}); delete the folder to start over") from err
    if progress.get("fingerprint") != fingerprint:
        raise CalibrationInputError(
            f"the checkpoint folder {folder} holds a different run (another model, method setting or calibration "
            "set, or an older tritium): pass a new checkpoint folder, or delete this one to start over"
        )
    return int(progress["finished_blocks"])


def load_pieces(folder: Path) -> list[dict]:
    """The pieces the checkpointed run was made in: each {"started", "from_block", "to_block", "seconds"},
    its seconds counted up to its last checkpoint (the work it kept). Empty for checkpoints from before."""
    try:
        pieces = json.loads((folder / "progress.json").read_text()).get("pieces")
    except (OSError, json.JSONDecodeError):
        return []
    return [dict(p) for p in pieces] if isinstance(pieces, list) else []


def load_block_checkpoint(folder: Path, index: int, fingerprint: str, grid: Grid) -> tuple[dict, BlockResult]:
    path = _block_file(folder, index)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise CalibrationInputError(
            f"checkpoint {path} cannot be read ({err}); delete {folder} to start over"
        ) from err
    if state.get("fingerprint") != fingerprint:
        raise CalibrationInputError(f"checkpoint {path} belongs to another run; delete {folder} to start over")
    weights = {n: _qweight_from_state(s, grid) for n, s in state["weights"].items()}
    return state["block_state"], BlockResult(weights, json.loads(state["stats"]))


def run_fingerprint(method: str, method_args: dict, grid: Grid, layout: DecoderLayout, input_ids: Tensor,
                    linear_names: list[str]) -> str:
    """Identifies a run: same model weights, method settings, grid and calibration set."""
    digest = hashlib.sha256()
    settings = {k: v for k, v in method_args.items() if k not in ("checkpoint_dir", "device", "offload_dir")}
    digest.update(json.dumps([CHECKPOINT_VERSION, method, repr(grid), sorted(settings.items()), sorted(linear_names)],
                             default=str).encode())
    digest.update(input_ids.cpu().numpy().tobytes())
    # The first block's weights identify the float model cheaply (a resumed run must load the same one).
    for tensor in layout.blocks[0].state_dict().values():
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


# --------------------------------------------------------------------------- the walk


def _write_weights(block: nn.Module, weights: dict[str, QuantizedWeight]) -> None:
    for short, qweight in weights.items():
        module = block.get_submodule(short)
        module.weight.data.copy_(qweight.dequantize(module.weight.dtype).to(module.weight.device))


def run_blockwise(model: nn.Module, layout: DecoderLayout, linears: dict[str, nn.Linear], input_ids: Tensor,
                  method: BlockMethod, settings: PipelineSettings, grid: Grid, method_name: str,
                  method_args: dict | None = None, progress: bool = True) -> tuple[dict[str, QuantizedWeight], dict]:
    """Quantize ``model`` block by block with ``method``; returns weights by full linear name and run details.

    The model is modified in place: every finished block holds its dequantized weights and
    any other change the method made (e.g. AWQ's folded norm scales).
    """
    if settings.forward_batch_size < 1:
        raise CalibrationInputError(f"forward_batch_size must be at least 1, got {settings.forward_batch_size}")
    start_time = time.perf_counter()
    device = resolve_device(settings.device)
    input_ids = check_calibration_ids(model, input_ids)
    inputs: BlockInputs = capture_block_inputs(model, layout, input_ids)
    stream_device = torch.device("cpu") if settings.offload_activations else device
    float_stream = inputs.hidden.to(stream_device)
    quant_stream = float_stream.clone()
    del inputs.hidden

    folder = Path(settings.checkpoint_dir) if settings.checkpoint_dir else None
    fingerprint = run_fingerprint(method_name, method_args or {}, grid, layout, input_ids,
                                  list(linears))
    lock = _lock_checkpoint_folder(folder, method_name) if folder else None
    try:
        return _run_locked(model, layout, linears, input_ids, method, settings, grid, method_name, progress,
                           start_time, device, inputs, float_stream, quant_stream, folder, fingerprint)
    finally:
        if lock is not None:
            lock.release()


def _lock_checkpoint_folder(folder: Path, method_name: str):
    """Lock ``folder`` against a second run checkpointing into it, and clear the temporaries killed runs left."""
    from ..utils.runs import FolderLock, clean_stale_temporaries

    folder.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(folder / ".tritium.lock", f"the checkpoint folder {folder}", f"quantize ({method_name})")
    notes = lock.acquire()
    try:
        notes += clean_stale_temporaries(folder, recursive=False)
    except BaseException:
        lock.release()
        raise
    for note in notes:
        print(f"tritium: note: {note}", file=sys.stderr)
    return lock


def _run_locked(model, layout, linears, input_ids, method, settings, grid, method_name, progress, start_time, device,
                inputs, float_stream, quant_stream, folder, fingerprint):
    finished = load_progress(folder, fingerprint) if folder else 0
    if finished > layout.num_blocks:
        raise CalibrationInputError(f"checkpoint {folder} claims {finished} blocks; the model has {layout.num_blocks}")
    earlier = load_pieces(folder) if folder and finished else []
    piece = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "from_block": finished, "to_block": finished,
             "seconds": 0.0}
    pieces = [*earlier, piece]
    if finished:
        earlier_seconds = sum(float(p.get("seconds") or 0) for p in earlier)
        done = "block 0" if finished == 1 else f"blocks 0-{finished - 1}"
        print(f"tritium: resumed from block {finished} of {layout.num_blocks}: {done} replayed from the checkpoint "
              f"{folder}" + (f" ({len(earlier)} earlier piece(s), {earlier_seconds:.1f} s of calibration)"
                             if earlier else ""), file=sys.stderr)

    weights: dict[str, QuantizedWeight] = {}
    block_stats: list[dict] = []
    iterator = progress_bar(range(layout.num_blocks), enabled=progress, desc=method_name, unit="block", leave=False,
                            mininterval=2)
    offloader = None
    offload_dir, temporary_offload = settings.offload_dir, None
    if offload_dir is None and settings.auto_offload:
        needed, available = blocks_bytes(layout), memory_available_bytes()
        if available is not None and available < needed:
            # Named as tritium's temporaries are, so that one a killed run leaves is cleared by the next.
            temporary_offload = tempfile.mkdtemp(prefix=temporary_prefix(Path("offload")), suffix=TEMPORARY_SUFFIX,
                                                 dir=folder if folder is not None and folder.is_dir() else None)
            offload_dir = temporary_offload
            warnings.warn(f"memory is short ({available / 2**30:.2f} GiB available, the decoder blocks take "
                          f"{needed / 2**30:.2f} GiB): the blocks wait on disk in {offload_dir} while one is "
                          "calibrated; pass --offload-dir to choose the folder", RuntimeWarning, stacklevel=2)
    if offload_dir:
        from .offload import BlockOffloader

        offloader = BlockOffloader(offload_dir, list(layout.blocks))
        for index in range(layout.num_blocks):
            offloader.offload(index)
    try:
        _walk(iterator, layout, linears, method, settings, grid, device, inputs, float_stream, quant_stream, folder,
              fingerprint, finished, weights, block_stats, offloader, pieces, start_time)
    finally:  # the caller's model comes back whole, even when a block fails
        if offloader is not None:
            offloader.restore_all()
        if temporary_offload is not None:
            shutil.rmtree(temporary_offload, ignore_errors=True)
    piece["seconds"] = round(time.perf_counter() - start_time, 3)
    details = {"device": str(device), "resumed_from_block": finished, "num_blocks": layout.num_blocks,
               "calibration_shape": list(input_ids.shape), "pipeline_seconds": piece["seconds"],
               "pieces": pieces, "earlier_pieces_seconds": round(sum(float(p.get("seconds") or 0) for p in earlier), 3),
               "blocks": block_stats, "offload_dir": offload_dir, "auto_offload": temporary_offload is not None}
    return weights, details


@contextmanager
def block_activations_quantized(block: nn.Module, block_name: str, selected: dict, grids: dict | None):
    """Inside, the selected linears of ``block`` fake-quantize their inputs on their grids (by full name in
    ``grids``); afterwards the block is as it was. Nothing happens without grids (weights only)."""
    chosen = {short: grids[f"{block_name}.{short}"] for short in selected if f"{block_name}.{short}" in (grids or {})}
    if not chosen:
        yield
        return
    from ..nn.activation_quant import install_activation_quantizers, remove_activation_quantizers_of

    install_activation_quantizers(block, chosen)
    try:
        yield
    finally:
        for short in chosen:
            remove_activation_quantizers_of(block.get_submodule(short))


def _walk(iterator, layout, linears, method, settings, grid, device, inputs, float_stream, quant_stream, folder,
          fingerprint, finished, weights, block_stats, offloader, pieces, start_time) -> None:
    for index in iterator:
        if offloader is not None:
            offloader.restore(index)
        block = layout.blocks[index]
        name = f"{layout.blocks_path}.{index}"
        home = next(block.parameters()).device
        block.to(device)
        kwargs = move_kwargs(inputs.layer_kwargs[index], device)
        with torch.no_grad(), finite_guard(block, name, index, "running the float model"):
            float_targets = block_forward(block, float_stream, kwargs, settings.forward_batch_size, device)
        selected = {short: module for short, module in layout.block_linears(index).items()
                    if f"{name}.{short}" in linears}
        with block_activations_quantized(block, name, selected, settings.activation_grids):
            if index < finished:  # replay a checkpointed block
                block_state, result = load_block_checkpoint(folder, index, fingerprint, grid)
                block.load_state_dict(block_state)
            else:
                block_start, block_cpu = time.perf_counter(), time.process_time()
                context = BlockContext(index, name, block, selected, quant_stream, float_stream, float_targets,
                                       kwargs, device, settings.forward_batch_size, settings.seed * 100_003 + index,
                                       layout.scale_groups, layout.norm_weight_offset)
                result = method(context)
                _write_weights(block, result.weights)
                # CPU seconds (all threads) beside wall seconds: on a shared machine they tell what the run costs.
                result.stats = {"block": index, "seconds": round(time.perf_counter() - block_start, 3),
                                "cpu_seconds": round(time.process_time() - block_cpu, 3), **result.stats}
            with torch.no_grad(), finite_guard(block, name, index, "running the quantized block"):
                block_forward(block, quant_stream, kwargs, settings.forward_batch_size, device, out=quant_stream)
        # The block-output error along the quantized chain: what every method tries to lower.
        result.stats["output_mse"] = float((quant_stream.float() - float_targets.float()).pow(2).mean())
        if index >= finished and folder:
            pieces[-1].update(to_block=index + 1, seconds=round(time.perf_counter() - start_time, 3))
            save_block_checkpoint(folder, index, block, result, fingerprint, pieces)
        float_stream = float_targets
        block.to(home)
        if offloader is not None:
            offloader.offload(index)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        weights.update({f"{name}.{short}": q for short, q in result.weights.items()})
        block_stats.append(result.stats)

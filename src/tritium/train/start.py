"""Where a student starts (``init_from``): a PTQ result, exactly, or the weights of a float model.

A fake-quant folder that ``tritium quantize`` saved holds the exact codes, scales, zero points and
shifts of every quantized linear beside its dequantized weights (``tritium_codes.safetensors``). A
student started from it takes those values, so its forward at step 0 is the PTQ model's. Copying
only the dequantized weights and re-fitting the quantizer to them (what tritium did before) changes
the codes and scales a little, and puts every latent weight on a rounding or clip edge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..models.rotation import RotationSettings, saved_rotation
from ..quant.grids import GGUFBlockGrid, Grid, QuantConfigError, TernaryGrid, grid_from_dict, grids_from_dicts

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class StartSource:
    """A checked ``init_from``: where its weights are and, for a PTQ result, its grid."""

    location: str  # a model folder, or any source load_model resolves (a float model)
    grid: Grid | None = None  # None: float weights, with no codes to start from
    # The rotation the start's weights carry (tritium quantize --rotate); the student and its teacher
    # are rotated the same way before the weights copy in.
    rotation: RotationSettings | None = None
    # The start's linears on another grid than ``grid`` (a GGUF grid's per-linear fallback types), by full name.
    grid_overrides: dict[str, Grid] = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        return self.grid is not None


def read_start(source: str, student_grid: Grid) -> StartSource:
    """Check ``source`` against the student's grid without loading any weights.

    A tritium folder must be quantized on the student's grid and hold its codes; anything else is an
    error that names what to change. A folder without a ``quantization_config`` is a float model.
    """
    from ..pack.codes import CODES_FILE

    folder = Path(source).expanduser()
    if folder.is_dir() and not (folder / CONFIG_FILE).is_file() and (folder / "model" / CONFIG_FILE).is_file():
        folder = folder / "model"  # a run folder: start from the model it saved
    if not folder.is_dir():
        return StartSource(str(source))  # a named model or hub id: float weights, checked when loaded
    if not (folder / CONFIG_FILE).is_file():
        raise QuantConfigError(f"init_from {source}: the folder holds no {CONFIG_FILE}; give the model folder that "
                               "`tritium quantize` saved (runs/<run>/model)")
    saved = json.loads((folder / CONFIG_FILE).read_text())
    rotation = saved_rotation(saved)
    qconfig = saved.get("quantization_config")
    if not qconfig:
        return StartSource(str(folder), rotation=rotation)
    if qconfig.get("quant_method") != "tritium" or "grid" not in qconfig:
        raise QuantConfigError(f"init_from {source} was quantized by {qconfig.get('quant_method')!r}, not tritium: "
                               "start from a tritium fake-quant folder or a float model")
    if qconfig.get("format") not in ("fake", "packed"):
        raise QuantConfigError(f"init_from {source} is a {qconfig.get('format')!r} folder; start from the packed or "
                               "fake-quant folder that `tritium quantize` saved (runs/<run>/model), which keeps the codes")
    grid = grid_from_dict(qconfig["grid"])
    if grid.describe() != student_grid.describe():
        how = f"pass --grid {grid.describe()}" if isinstance(grid, GGUFBlockGrid) else (
            "use a recipe (or --group/--variant)")
        raise QuantConfigError(
            f"init_from {source} was quantized on {grid.describe()}, but the student trains on "
            f"{student_grid.describe()}: {how} with the start's grid {grid.describe()}, "
            f"or quantize the start on {student_grid.describe()}"
        )
    if qconfig.get("format") == "fake" and not (folder / CODES_FILE).is_file():
        raise QuantConfigError(f"init_from {source} holds no {CODES_FILE}, the exact codes a start needs: re-run "
                               "`tritium quantize` on it (it writes them beside fake-quant weights)")
    overrides = grids_from_dicts(qconfig.get("grid_overrides"))
    if overrides and not (isinstance(grid, GGUFBlockGrid) and all(isinstance(g, GGUFBlockGrid)
                                                                    for g in overrides.values())):
        # Only the GGUF student trains each linear on its own type (llama.cpp's fallbacks); the others would
        # load the codes of another grid into this one's parameters.
        example = next(iter(sorted(overrides)))
        raise QuantConfigError(
            f"init_from {source} puts {len(overrides)} linears on other grids than {grid.describe()} (mixed precision, "
            f"e.g. {example} on {overrides[example].describe()}), and the student trains every linear on one grid: "
            "start from a result quantized on one grid (without --bits-budget or grid_overrides)")
    return StartSource(str(folder), grid, rotation, overrides)


@torch.no_grad()
def load_initial_weights(student: nn.Module, source: str) -> int:
    """Copy the weights of a saved model (all of them: a method may change norms too) into ``student``;
    returns how many tensors moved."""
    from ..models import load_model

    start, _, _ = load_model(source)
    own = student.state_dict()
    copied = 0
    for key, value in start.state_dict().items():
        if key in own:
            if own[key].shape != value.shape:
                raise QuantConfigError(f"init_from {source}: {key} has shape {tuple(value.shape)}, the student "
                                       f"{tuple(own[key].shape)}: start from a result of the same model")
            own[key].copy_(value)
            copied += 1
    if copied == 0:
        raise QuantConfigError(f"init_from {source}: no parameter name matches the student; is it the same model?")
    return copied


def start_codes(folder: str) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor | None]]:
    """Each quantized linear's (codes, scale, zero, shift) from the folder's sidecar, as float32 per group;
    ternary codes in {−1, 0, 1} (int8), uniform codes as uint8."""
    saved = json.loads((Path(folder) / CONFIG_FILE).read_text()).get("quantization_config") or {}
    if saved.get("format") == "packed":
        # A packed folder is its own record of the codes: read them from the packed modules.
        from ..models import load_model
        from ..nn import packed_modules

        model, _, _ = load_model(folder)
        weights = {name: module.packed_weight() for name, module in packed_modules(model).items()}
        is_ternary = isinstance(grid_from_dict(saved["grid"]), TernaryGrid)
    else:
        from ..pack.codes import load_codes

        codes = load_codes(folder)
        weights = codes.weights
        is_ternary = isinstance(codes.grid_object(), TernaryGrid)
    out = {}
    for name, packed in weights.items():
        scale, zero, shift = packed.group_params()
        digits = packed.digits()
        if is_ternary:
            out[name] = ((digits.to(torch.int16) - int(packed.implicit_zero)).to(torch.int8), scale, zero, shift)
        else:
            out[name] = (digits.to(torch.uint8), scale, zero, shift)
    return out


def _per_layout(t: Tensor, layout, name: str, part: str) -> Tensor:
    """The sidecar stores per-group values ``[out, n_groups]``; a per-tensor layout keeps one."""
    if tuple(t.shape) == layout.scale_shape:
        return t
    if layout.per_tensor and bool((t == t.flatten()[0]).all()):
        return t.flatten()[:1].reshape(1, 1)
    raise QuantConfigError(f"init_from: {name}'s {part} has shape {tuple(t.shape)}, the student's groups "
                           f"{layout.scale_shape}: quantize the start with the student's group size")


@torch.no_grad()
def load_start_codes(students: dict[str, nn.Module], folder: str, references: dict[str, Tensor] | None = None) -> int:
    """Give every student linear its PTQ codes, scales and zero points (or α and γ); their forward then
    equals the PTQ model's. Each student linear needs codes in the folder. With ``references`` (float
    weights by name) the latents keep the float positions inside their codes' cells; returns how many
    linears got that placement."""
    from .dlt import DLTLinear
    from .gguf_qat import GGUFQATLinear

    found = start_codes(folder)
    placed = 0
    missing = sorted(set(students) - set(found))
    if missing:
        raise QuantConfigError(f"init_from {folder} has no codes for {len(missing)} of the student's linears (e.g. "
                               f"{missing[0]}): it kept them in float; give the student the same skip list")
    for name, module in students.items():
        codes, scale, zero, shift = found[name]
        if tuple(codes.shape) != tuple(module.weight.shape):
            raise QuantConfigError(f"init_from {folder}: {name} has codes of shape {tuple(codes.shape)}, the student "
                                   f"{tuple(module.weight.shape)}: start from a result of the same model")
        scale = _per_layout(scale, module.layout, name, "scale")
        reference = None if references is None else references[name]
        if isinstance(module, GGUFQATLinear):
            shift = None if shift is None else _per_layout(shift, module.layout, name, "shift")
            placed += module.load_codes(codes, scale, _per_layout(zero, module.layout, name, "zero point"), shift,
                                        reference)
        elif isinstance(module, DLTLinear):
            shift = torch.zeros_like(scale) if shift is None else _per_layout(shift, module.layout, name, "shift")
            placed += module.load_codes(codes, scale, shift, reference)
        else:
            placed += module.load_codes(codes, scale, _per_layout(zero, module.layout, name, "zero point"), reference)
    return placed

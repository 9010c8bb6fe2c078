"""TernaryLLM distillation: a float teacher, a DLT ternary or uniform QAT (or plain-STE) student,
OFF + KL (+ CE), the trainer.

``distill(model, tokenizer, config, out_dir)`` turns ``model`` into its folded quantized student in
place and returns the ``QuantizationResult`` (codes, fp16 scales, zero points and shifts) that packing
and export read. ``init_from`` continues a PTQ result exactly (the QAT chain), and ``trainable:
scales`` tunes only its scales (EfficientQAT's E2E-QP). The same run is registered as the method
``dlt``, so ``tritium quantize --method dlt`` trains on its calibration samples, and ``tritium distill``
drives it with a token budget.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..methods.base import MethodConfig, register_method
from ..models.rotation import match_rotation_, saved_rotation
from ..nn.activation_quant import install_activation_quantizers
from ..quant.grids import GGUFBlockGrid, QuantConfigError, TernaryGrid, UniformGrid
from .data import TeacherSamplingConfig, TrainDataError, generate_teacher_corpus, load_sequences
from .dlt import DLTConfig, _replace, fold_, to_dlt_, to_fake_quant_, to_gguf_qat_, to_uniform_qat_
from .flips import CodeFlipTracker
from .qat import SCALE_GRADIENTS
from .losses import DistillationLoss, LossConfig, check_same_vocabulary
from .start import StartSource, load_initial_weights, load_start_codes, read_start
from .trainer import TrainConfig, Trainer, TrainResult, build_dataclass

TEACHER_SOURCE = "teacher"
TRAIN_FLOAT = ("none", "norms", "all")
# all: latent weights and quantizer parameters; scales: the codes stay fixed (EfficientQAT's E2E-QP)
TRAINABLE = ("all", "scales")
START_LATENTS = ("centre", "float")


@dataclass
class DataConfig:
    # Files, folders, globs, hf:<path>[:<config>]:<split>, a teacher-corpus folder, or "teacher" to sample one.
    sources: list[str] = field(default_factory=list)
    seqlen: int = 512
    text_field: str = "text"
    teacher_corpus: str | None = None  # where "teacher" samples go (default: <run>/teacher-corpus)
    teacher_sampling: dict = field(default_factory=dict)  # TeacherSamplingConfig options; seqlen is this seqlen

    def __post_init__(self):
        self.sources = [self.sources] if isinstance(self.sources, str) else list(self.sources or [])


@dataclass
class DistillConfig(MethodConfig):
    """Every hyperparameter of a distillation run; ``grid`` picks the student's quantizer.

    A ternary ``dlt`` grid trains DLT linears (learnable α, γ); a uniform grid trains uniform QAT
    linears (learnable scale and zero point, LSQ style); a GGUF grid (``gguf:q2_k``, ...) trains the
    format's own fp16 d and dmin over fixed sub-block integers (train/gguf_qat.py); the other ternary grids
    (absmean, twn) train plain straight-through fake quant, the baseline of the ablation.
    """

    grid: TernaryGrid | UniformGrid | GGUFBlockGrid = field(default_factory=lambda: TernaryGrid(variant="dlt", group=128))
    shift_init: str = "mean"
    learn_shift: bool = True
    ste_clip: float | None = 1.0
    # Ternary dlt grids: where a latent turns into ±1, TWN's 0.7·mean|W − γ| ("twn") or ParetoQ's α/2 ("seq").
    ternary_threshold: str = "twn"
    quantize_lm_head: bool = False
    # Float parameters that train beside the quantized ones: none, the norms, or all (embeddings too).
    train_float: str = "none"
    # A saved model whose weights start the student; the teacher stays float. A tritium PTQ folder on the
    # student's grid starts it exactly (step 0 is the PTQ model); a float folder gives its weights only.
    init_from: str | None = None
    # Which quantized parameters train: all, or only the scales, zero points and shifts (codes frozen, E2E-QP).
    trainable: str = "all"
    # Uniform grids: the scales' gradient, LSQ's ("lsq") or the frozen-codes one ("codes", train/qat.py),
    # which still moves the scales when the latents sit at their cells' centres (a PTQ start).
    scale_gradient: str = "lsq"
    # With a PTQ start (init_from), where each latent weight starts inside its code's cell: at the cell's
    # centre ("centre"), or at the float weight's own position clamped into the cell ("float"), so that
    # weights near a threshold can flip early. Step 0 is the PTQ model either way.
    start_latents: str = "centre"
    # Log, every step, the fraction of codes that flipped in it and that differ from step 0 (train/flips.py).
    track_code_flips: bool = False
    # Where `tritium quantize --method dlt` keeps checkpoints and the log (a rerun resumes); default a temp folder.
    run_dir: str | None = None
    loss: dict = field(default_factory=dict)
    train: dict = field(default_factory=lambda: {"steps": 100})
    data: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.train_float not in TRAIN_FLOAT:
            raise QuantConfigError(f"train_float={self.train_float!r} is unknown: use one of {TRAIN_FLOAT}")
        if self.trainable not in TRAINABLE:
            raise QuantConfigError(f"trainable={self.trainable!r} is unknown: use one of {TRAINABLE}")
        if self.start_latents not in START_LATENTS:
            raise QuantConfigError(f"start_latents={self.start_latents!r} is unknown: use one of {START_LATENTS}")
        if self.start_latents != "centre" and (not self.init_from or self.trainable == "scales"):
            raise QuantConfigError(f"start_latents={self.start_latents!r} places the latents of a PTQ start that "
                                   "trains its codes: it needs init_from and trainable: all")
        if self.start_latents != "centre" and self.student_kind == "ste":
            raise QuantConfigError(f"start_latents={self.start_latents!r} needs a student that starts from PTQ codes "
                                   f"(a ternary dlt or a uniform grid); {self.grid.describe()} trains plain "
                                   "straight-through weights")
        if not isinstance(self.track_code_flips, bool):
            raise QuantConfigError(f"track_code_flips must be true or false, not {self.track_code_flips!r}")
        if self.track_code_flips and self.student_kind == "ste":
            raise QuantConfigError(f"track_code_flips needs a student with integer codes (a ternary dlt or a uniform "
                                   f"grid); {self.grid.describe()} trains plain straight-through weights")
        if self.scale_gradient not in SCALE_GRADIENTS:
            raise QuantConfigError(f"scale_gradient={self.scale_gradient!r} is unknown: use one of {SCALE_GRADIENTS}")
        if self.scale_gradient != "lsq" and not isinstance(self.grid, (UniformGrid, GGUFBlockGrid)):
            raise QuantConfigError(f"scale_gradient={self.scale_gradient!r} applies to uniform and GGUF grids; "
                                   f"{self.grid.describe()} trains its own quantizer: drop the option")
        if self.ternary_threshold != "twn" and self.student_kind != "dlt":
            raise QuantConfigError(f"ternary_threshold={self.ternary_threshold!r} applies to ternary dlt grids; "
                                   f"{self.grid.describe()} has no ternary threshold: drop the option")
        self.skip = tuple(self.skip or ())
        # Build every part once now so a bad option fails before a model loads.
        self.dlt_config(), self.loss_config(), self.train_config(), self.data_config()
        if self.trainable == "scales":
            if not self.init_from:
                raise QuantConfigError("training only the scales (trainable: scales, --train scales) needs codes to "
                                       "keep: give the PTQ result to start from with init_from (--init-from)")
            if self.student_kind == "ste":
                raise QuantConfigError(f"trainable: scales needs learnable scales, which the plain-STE student on "
                                       f"{self.grid.describe()} has not: use a ternary dlt or a uniform grid")
        self.start_source()  # reads only the start's config.json: a wrong grid fails here, before any work

    def dlt_config(self) -> DLTConfig:
        return DLTConfig(group=self.grid.group, ragged_groups=self.grid.ragged_groups, shift_init=self.shift_init,
                         learn_shift=self.learn_shift, ste_clip=self.ste_clip,
                         ternary_threshold=self.ternary_threshold, skip=self.skip,
                         quantize_lm_head=self.quantize_lm_head)

    def loss_config(self) -> LossConfig:
        return build_dataclass(LossConfig, dict(self.loss), "loss")

    def train_config(self) -> TrainConfig:
        return build_dataclass(TrainConfig, dict(self.train), "train")

    def data_config(self) -> DataConfig:
        return build_dataclass(DataConfig, dict(self.data), "data")

    @property
    def uses_dlt(self) -> bool:
        return isinstance(self.grid, TernaryGrid) and self.grid.variant == "dlt"

    @property
    def student_kind(self) -> str:
        """dlt, qat (uniform grid, learnable scale and zero), gguf (a llama.cpp block format, learnable d and
        dmin) or ste (plain straight-through baseline)."""
        if isinstance(self.grid, GGUFBlockGrid):
            return "gguf"
        return "dlt" if self.uses_dlt else "qat" if isinstance(self.grid, UniformGrid) else "ste"

    def start_source(self) -> StartSource | None:
        """The checked ``init_from`` (None without one); reads its config.json only."""
        if not self.init_from:
            return None
        start = read_start(self.init_from, self.grid)
        if self.trainable == "scales" and not start.quantized:
            raise QuantConfigError(f"trainable: scales keeps the codes of its start, but init_from {self.init_from} "
                                   "is a float model: start from a tritium PTQ folder")
        if self.start_latents != "centre" and not start.quantized:
            raise QuantConfigError(f"start_latents={self.start_latents!r} places latents inside the cells of a "
                                   f"PTQ start's codes, but init_from {self.init_from} is a float model: start "
                                   "from a tritium PTQ folder, or drop the option")
        return start


def _set_trainable(model: nn.Module, train_float: str, trainable: str = "all") -> None:
    """α/γ (or scale/zero) always train, latent weights unless ``trainable`` is scales; the float rest as
    ``train_float`` says."""
    from .dlt import quant_parameters

    latent, quant = quant_parameters(model)
    keep = {id(p) for p in quant}
    latent_ids = {id(p) for p in latent}
    for name, p in model.named_parameters():
        if id(p) in keep:
            p.requires_grad_(True)
        elif id(p) in latent_ids:
            p.requires_grad_(trainable == "all")
        elif train_float == "all":
            p.requires_grad_(True)
        elif train_float == "norms":
            p.requires_grad_(p.dim() == 1 and "norm" in name)
        else:
            p.requires_grad_(False)


def prepare_student(model: nn.Module, config: DistillConfig, start: StartSource | None = None) -> dict:
    """Turn ``model`` into the untrained student in place (its step 0); returns its quantized linears by name.

    With a PTQ start on the student's grid the linears take its codes and scales, so the student computes
    exactly the PTQ model; ``trainable: scales`` then freezes those codes.
    """
    references = None
    if start is not None:
        match_rotation_(model, start.rotation)  # a rotated start's weights only fit a model rotated alike
        if config.start_latents == "float" and start.quantized:  # the float weights, before the start replaces them
            references = {name: m.weight.detach().clone() for name, m in model.named_modules()
                          if isinstance(m, nn.Linear)}
        load_initial_weights(model, start.location)  # all tensors: methods may change norms too
    kind = config.student_kind
    if kind == "dlt":
        students = to_dlt_(model, config.dlt_config())
    elif kind == "qat":
        students = to_uniform_qat_(model, config.grid, config.skip, config.quantize_lm_head, config.scale_gradient)
    elif kind == "gguf":  # each linear on the start's type for it (its fallbacks), else the grid's own rule
        overrides = start.grid_overrides if start is not None and start.quantized else None
        students = to_gguf_qat_(model, config.grid, config.skip, config.quantize_lm_head, overrides,
                                config.scale_gradient)
    else:
        students = to_fake_quant_(model, config.grid, config.skip, config.quantize_lm_head)
    if start is not None and start.quantized and kind != "ste":
        placed = load_start_codes(students, start.location, references)  # step 0 is the PTQ model, exactly
        if references is not None and placed < len(students):
            print(f"tritium: note: {len(students) - placed} of {len(students)} linears could not keep the float "
                  "positions inside their cells and start at the cells' centres", file=sys.stderr)
    if config.trainable == "scales":
        for module in students.values():
            module.freeze_codes()
    _set_trainable(model, config.train_float, config.trainable)
    return students


def training_sequences(model, tokenizer, data: DataConfig, tokens: int | None, out_dir: Path, data_path=None,
                       progress: bool = True) -> torch.Tensor:
    sources = list(data.sources)
    if not sources:
        raise TrainDataError("no training data: give data.sources (files, hf:..., or 'teacher' for the data-free mode)")
    if TEACHER_SOURCE in sources:
        corpus_dir = Path(data.teacher_corpus) if data.teacher_corpus else out_dir / "teacher-corpus"
        options = dict(data.teacher_sampling)
        options["seqlen"] = data.seqlen
        if "n_sequences" not in options:
            if not tokens:
                raise TrainDataError("the data-free mode needs teacher_sampling.n_sequences or a token budget")
            options["n_sequences"] = math.ceil(tokens / data.seqlen)
        sampling = build_dataclass(TeacherSamplingConfig, options, "teacher_sampling")
        generate_teacher_corpus(model, tokenizer, corpus_dir, sampling, progress=progress)
        sources = [str(corpus_dir) if s == TEACHER_SOURCE else s for s in sources]
    return load_sequences(sources, tokenizer, data.seqlen, data.text_field, model=model, data_path=data_path)


def distill(model: nn.Module, tokenizer, config: DistillConfig, out_dir, sequences: torch.Tensor | None = None,
            teacher: nn.Module | None = None, eval_ids: torch.Tensor | None = None, data_path=None,
            resume: bool = True, callbacks=()):
    """Distill ``model`` into its quantized self in place; returns ``(QuantizationResult, TrainResult)``.

    ``sequences`` overrides the data config (``[n, seqlen]`` token ids). The float teacher is a copy of
    ``model`` taken before anything changes, unless one is given.
    """
    out_dir = Path(out_dir)
    start = config.start_source()
    train_cfg = config.train_config()
    loss_cfg = config.loss_config()
    if start is not None:
        # Before the teacher is copied, so that OFF compares hidden states in the start's (rotated) basis;
        # the rotation leaves the function the same.
        match_rotation_(model, start.rotation)
        if teacher is not None and saved_rotation(teacher.config) != start.rotation:
            teacher = copy.deepcopy(teacher)  # the caller's teacher stays as it was
            match_rotation_(teacher, start.rotation)
    teacher = teacher if teacher is not None else (copy.deepcopy(model) if loss_cfg.needs_teacher else None)
    if teacher is not None:
        check_same_vocabulary(teacher, model, tokenizer)
    if sequences is None:
        sequences = training_sequences(teacher if teacher is not None else model, tokenizer, config.data_config(),
                                       train_cfg.tokens, out_dir, data_path, train_cfg.progress)
    students = prepare_student(model, config, start)
    if config.act_grid is not None:  # W·A training (e.g. BitNet b1.58's W1.58A8): inputs quantized from step 0
        install_activation_quantizers(model, {name: config.act_grid for name in students})
    loss_fn = DistillationLoss(teacher, loss_cfg, model)
    step_metrics = [CodeFlipTracker(students)] if config.track_code_flips else []
    trainer = Trainer(model, loss_fn, sequences, train_cfg, out_dir, eval_ids=eval_ids, callbacks=callbacks,
                      step_metrics=step_metrics)
    result = trainer.run(resume=resume)
    if train_cfg.gradient_checkpointing:
        disable = getattr(model, "activation_checkpointing_disable", None) or \
            getattr(model, "gradient_checkpointing_disable", None)
        if disable is not None:
            disable()
    model.eval()
    details = {"train_steps": result.steps, "train_tokens": result.tokens,
               "train_tokens_per_second": result.tokens_per_second, "final_loss": result.losses()[-1],
               "resumed_from": result.resumed_from}
    method = {"dlt": "dlt", "qat": "qat", "gguf": "qat", "ste": "qat-ste"}[config.student_kind]
    folded = fold_(model, method=method, method_args=config.method_args(), details=details, grid=config.grid)
    if config.act_grid is not None:  # the folded linears replaced the trained ones and their quantizers
        folded.act_grids = {name: config.act_grid for name in folded.weights}
        install_activation_quantizers(model, folded.act_grids)
    model.requires_grad_(False)  # a finished model, as load_model returns it
    return folded, result


@register_method("dlt", DistillConfig, needs_calibration=True)
def dlt_method(model, layout, config: DistillConfig, linears, calibration):
    """The registry's entry: distill on the calibration samples, leave the original linears in place.

    ``quantize_`` writes the dequantized weights into the linears it selected, so the folded plain
    linears are swapped back for those originals.
    """
    import tempfile

    out = config.run_dir or tempfile.mkdtemp(prefix="tritium-dlt-")
    with torch.enable_grad():  # quantize_ runs its handler under no_grad
        result, _ = distill(model, None, config, out, sequences=calibration)
    for name, module in linears.items():
        _replace(model, name, module)
    return result.weights, result.details


def train_result_summary(result: TrainResult) -> dict:
    return {"steps": result.steps, "tokens": result.tokens, "train_seconds": result.train_seconds,
            "tokens_per_second": result.tokens_per_second, "resumed_from": result.resumed_from,
            "first_loss": result.losses()[0] if result.losses() else None,
            "last_loss": result.losses()[-1] if result.losses() else None}




"""TernaryLLM distillation: a float teacher, a DLT (or plain-STE) student, OFF + KL (+ CE), the trainer.

``distill(model, tokenizer, config, out_dir)`` turns ``model`` into its folded ternary student in
place and returns the ``QuantizationResult`` (codes, fp16 scales and shifts) that packing and
export read. The same run is registered as the method ``dlt``, so ``tritium quantize --method dlt``
trains on its calibration samples, and ``tritium distill`` drives it with a token budget.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..methods.base import MethodConfig, register_method
from ..quant.grids import QuantConfigError, TernaryGrid, UniformGrid
from .data import TeacherSamplingConfig, TrainDataError, generate_teacher_corpus, load_sequences
from .dlt import DLTConfig, _replace, fold_, to_dlt_, to_fake_quant_
from .losses import DistillationLoss, LossConfig, check_same_vocabulary
from .trainer import TrainConfig, Trainer, TrainResult, build_dataclass

TEACHER_SOURCE = "teacher"
TRAIN_FLOAT = ("none", "norms", "all")


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
    """Every hyperparameter of a TernaryLLM run; ``grid`` picks the student's quantizer.

    A ternary ``dlt`` grid trains DLT linears; any other grid (absmean, twn, uniform) trains plain
    straight-through fake quant, the baseline of the ablation.
    """

    grid: TernaryGrid | UniformGrid = field(default_factory=lambda: TernaryGrid(variant="dlt", group=128))
    shift_init: str = "mean"
    learn_shift: bool = True
    ste_clip: float | None = 1.0
    quantize_lm_head: bool = False
    # Float parameters that train beside the quantized ones: none, the norms, or all (embeddings too).
    train_float: str = "none"
    # A saved model (e.g. the TesseraQ ternary result) whose weights start the student; the teacher stays float.
    init_from: str | None = None
    # Where `tritium quantize --method dlt` keeps checkpoints and the log (a rerun resumes); default a temp folder.
    run_dir: str | None = None
    loss: dict = field(default_factory=dict)
    train: dict = field(default_factory=lambda: {"steps": 100})
    data: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.train_float not in TRAIN_FLOAT:
            raise QuantConfigError(f"train_float={self.train_float!r} is unknown: use one of {TRAIN_FLOAT}")
        self.skip = tuple(self.skip or ())
        # Build every part once now so a bad option fails before a model loads.
        self.dlt_config(), self.loss_config(), self.train_config(), self.data_config()

    def dlt_config(self) -> DLTConfig:
        return DLTConfig(group=self.grid.group, ragged_groups=self.grid.ragged_groups, shift_init=self.shift_init,
                         learn_shift=self.learn_shift, ste_clip=self.ste_clip, skip=self.skip,
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


def _set_trainable(model: nn.Module, train_float: str) -> None:
    """Latent weights and α/γ always train; the float rest as ``train_float`` says."""
    from .dlt import quant_parameters

    latent, quant = quant_parameters(model)
    keep = {id(p) for p in latent + quant}
    for name, p in model.named_parameters():
        if id(p) in keep:
            p.requires_grad_(True)
        elif train_float == "all":
            p.requires_grad_(True)
        elif train_float == "norms":
            p.requires_grad_(p.dim() == 1 and "norm" in name)
        else:
            p.requires_grad_(False)


@torch.no_grad()
def load_initial_weights(student: nn.Module, source: str) -> int:
    """Copy the weights of a saved model (a PTQ result) into ``student``; returns how many tensors moved."""
    from ..models import load_model

    start, _, _ = load_model(source)
    own = student.state_dict()
    theirs = start.state_dict()
    copied = 0
    for key, value in theirs.items():
        if key in own:
            if own[key].shape != value.shape:
                raise QuantConfigError(f"init_from {source}: {key} has shape {tuple(value.shape)}, the student "
                                       f"{tuple(own[key].shape)}: start from a result of the same model")
            own[key].copy_(value)
            copied += 1
    if copied == 0:
        raise QuantConfigError(f"init_from {source}: no parameter name matches the student; is it the same model?")
    return copied


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
    train_cfg = config.train_config()
    loss_cfg = config.loss_config()
    teacher = teacher if teacher is not None else (copy.deepcopy(model) if loss_cfg.needs_teacher else None)
    if teacher is not None:
        check_same_vocabulary(teacher, model, tokenizer)
    if sequences is None:
        sequences = training_sequences(teacher if teacher is not None else model, tokenizer, config.data_config(),
                                       train_cfg.tokens, out_dir, data_path, train_cfg.progress)
    if config.init_from:
        load_initial_weights(model, config.init_from)
    if config.uses_dlt:
        to_dlt_(model, config.dlt_config())
    else:
        to_fake_quant_(model, config.grid, config.skip, config.quantize_lm_head)
    _set_trainable(model, config.train_float)
    loss_fn = DistillationLoss(teacher, loss_cfg, model)
    trainer = Trainer(model, loss_fn, sequences, train_cfg, out_dir, eval_ids=eval_ids, callbacks=callbacks)
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
    folded = fold_(model, method="dlt" if config.uses_dlt else "qat-ste", method_args=config.method_args(),
                   details=details)
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




"""Spectra pretraining: FloatLM, TriLM and BitNet b1.58 from scratch on one token budget.

The schedules are the paper's. TriLM (and BitNet): AdamW β = (0.9, 0.95), linear warmup,
linear decay, the peak learning rate halved at ``lr_drop_at`` (half the run) and weight
decay removed at ``weight_decay_off_at`` (two thirds). FloatLM: warmup then cosine decay.
Both are pure functions of the step, so a resumed run follows the same curve.

The machinery (checkpoints, resume, DDP/FSDP, bf16, progress, the JSONL log) is the
distillation trainer's; only the loss (next-token cross-entropy) and the schedules are ours.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import torch
from torch import Tensor

from ..models.spectra import (
    SpectraConfigError,
    build_model,
    canonical_arch,
    count_parameters,
    save_spectra_model,
    size_preset,
)
from ..utils.io import atomic_write_json
from .losses import LanguageModelLoss
from .trainer import OptimConfig, TrainConfig, Trainer, TrainResult, build_dataclass, lr_multiplier

SCHEDULES = ("auto", "spectra", "cosine")
FRACTIONS = ("warmup_fraction", "lr_drop_at", "weight_decay_off_at")


def _fraction_of_run(name: str, value) -> float | None:
    """A fraction of the run given as a number or as a ratio such as "2/3".

    A recipe cannot write two thirds as an exact decimal, and a rounded-up 0.6667 lands a step
    (or more) late on every run whose length divides by 3; "2/3" gives the step exactly.
    """
    if value is None:
        return None
    number = value
    if isinstance(value, str):
        try:
            number = Fraction(value.strip())
        except (ValueError, ZeroDivisionError):
            raise SpectraConfigError(
                f"{name} must be a fraction of the run such as 0.5 or 2/3, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float, Fraction)) or not 0 <= number <= 1:
        raise SpectraConfigError(f"{name} must be a fraction of the run in [0, 1], got {value!r}")
    return float(number)


def step_at(fraction: float, total_steps: int) -> int:
    """The first step at or past ``fraction`` of the run. The tolerance absorbs float rounding only
    (a product that should be a whole step can come out a hair above it), never a real part of a step."""
    return math.ceil(fraction * total_steps - 1e-9)


@dataclass
class PretrainConfig:
    arch: str = "trilm"  # float | trilm | bitnet
    size: str = "tiny-m"
    seqlen: int = 256  # training context (the model's max_position_embeddings)
    shards: int = 1  # absmean scales per matrix, as under N-way model parallelism
    lr: float | None = None  # the peak rate; None: lr_by_size[size]
    lr_by_size: dict[str, float] | None = None  # the recipes' per-size peak rates
    schedule: str = "auto"  # auto: spectra for ternary models, cosine for float
    warmup_fraction: float = 0.05  # used when train.optim.warmup_steps is 0
    min_lr_ratio: float = 0.1
    lr_drop_at: float = 0.5  # TriLM: fraction of the run where the peak rate drops
    lr_drop_factor: float = 0.5
    weight_decay: float = 0.1
    # TriLM: fraction of the run where weight decay stops; these fractions also take "2/3" strings
    weight_decay_off_at: float | None = 2 / 3
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW's, Spectra's for both families
    train: TrainConfig = field(default_factory=lambda: TrainConfig(tokens=1_000_000, micro_batch_size=8))

    def __post_init__(self):
        if isinstance(self.train, dict):
            train = dict(self.train)
            if isinstance(train.get("optim"), dict):
                train["optim"] = build_dataclass(OptimConfig, train["optim"], "train.optim")
            self.train = build_dataclass(TrainConfig, train, "train")
        self.arch = canonical_arch(self.arch)
        size_preset(self.size)
        if self.schedule not in SCHEDULES:
            raise SpectraConfigError(f"schedule {self.schedule!r} is unknown: use one of {SCHEDULES}")
        for name in FRACTIONS:
            setattr(self, name, _fraction_of_run(name, getattr(self, name)))
        for name in ("lr_drop_at", "warmup_fraction"):
            if getattr(self, name) is None:
                raise SpectraConfigError(f"{name} must be a fraction of the run in [0, 1], got None")
        self.betas = tuple(self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise SpectraConfigError(f"betas must be two numbers in [0, 1), e.g. [0.9, 0.95], got {list(self.betas)}")
        if self.seqlen < 2:
            raise SpectraConfigError(f"seqlen must be at least 2, got {self.seqlen}")

    @property
    def effective_schedule(self) -> str:
        if self.schedule != "auto":
            return self.schedule
        return "cosine" if self.arch == "float" else "spectra"

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        if not self.lr_by_size or self.size not in self.lr_by_size:
            raise SpectraConfigError(f"no learning rate for size {self.size!r}: give lr, or start from a recipe "
                                     f"whose lr_by_size has it (tritium pretrain --recipe spectra-{self.arch})")
        return float(self.lr_by_size[self.size])

    def optim(self, total_steps: int) -> OptimConfig:
        warmup = self.train.optim.warmup_steps or int(self.warmup_fraction * total_steps)
        return OptimConfig(lr=self.peak_lr, weight_decay=self.weight_decay, betas=self.betas,
                           schedule="cosine" if self.effective_schedule == "cosine" else "linear",
                           warmup_steps=min(warmup, max(0, total_steps - 1)), min_lr_ratio=self.min_lr_ratio,
                           max_grad_norm=self.train.optim.max_grad_norm)


PRETRAIN_RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes" / "pretrain"
RECIPE_FOR_ARCH = {"float": "spectra-floatlm", "trilm": "spectra-trilm", "bitnet": "spectra-bitnet"}


def pretrain_recipe_names() -> list[str]:
    return sorted(p.stem for p in PRETRAIN_RECIPE_DIR.glob("*.yaml"))


def load_pretrain_recipe(name_or_path: str) -> dict:
    """A pretraining recipe: a YAML file or a shipped name (``spectra-trilm``, ``suite-cpu``, ...)."""
    import yaml

    path = Path(name_or_path)
    if not path.is_file():
        path = PRETRAIN_RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise SpectraConfigError(f"pretraining recipe {name_or_path!r} not found: pass a YAML file or one of "
                                 f"{', '.join(pretrain_recipe_names())}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not set(data) <= {"description", "pretrain", "suite", "eval"}:
        raise SpectraConfigError(f"{path} must be a mapping with keys among description, pretrain, suite, eval")
    data["name"] = path.stem
    return data


def pretrain_config(arch: str, size: str, recipe: str | None = None, train: dict | None = None,
                    **overrides) -> PretrainConfig:
    """``arch``'s shipped recipe (or ``recipe``), with ``overrides`` and ``train`` settings on top."""
    arch = canonical_arch(arch)
    settings = dict(load_pretrain_recipe(recipe or RECIPE_FOR_ARCH[arch]).get("pretrain") or {})
    recipe_train = dict(settings.pop("train", None) or {})
    settings.update({k: v for k, v in overrides.items() if v is not None})
    settings.update(arch=arch, size=size)
    return PretrainConfig(**settings, train={**recipe_train, **(train or {})})


def spectra_lr_lambda(total_steps: int, optim: OptimConfig, drop_at: float = 0.5, drop_factor: float = 0.5):
    """TriLM's multiplier: warmup, linear decay, and the whole curve scaled by ``drop_factor``
    from step ``drop_at · total`` on."""
    drop_step = step_at(drop_at, total_steps)

    def multiplier(step: int) -> float:
        base = lr_multiplier(step, total_steps, optim)
        return base * drop_factor if step >= drop_step else base

    return multiplier


def weight_decay_lambda(total_steps: int, off_at: float | None):
    """1 before step ``off_at · total``, 0 from it on (None keeps weight decay throughout)."""
    off_step = step_at(off_at, total_steps) if off_at is not None else None
    return lambda step: 0.0 if off_step is not None and step >= off_step else 1.0


def total_steps_for(config: PretrainConfig, world: int | None = None) -> int:
    """Optimizer steps of the run; a token budget counts every process's batches (torchrun's WORLD_SIZE)."""
    import os

    world = world or int(os.environ.get("WORLD_SIZE", 1))
    train = config.train
    if train.steps is not None:
        return train.steps
    per_step = world * train.micro_batch_size * train.grad_accum * config.seqlen
    if train.tokens < per_step:
        raise SpectraConfigError(f"a budget of {train.tokens} tokens is less than one step of {per_step} tokens: "
                                 "raise --tokens or shrink the batch")
    return train.tokens // per_step


# --------------------------------------------------------------------------- throughput accounting


def flops_per_token(model, seqlen: int) -> float:
    """Training FLOPs per token (forward + backward): 6·N for the matrices (decoder linears and
    LM head; an embedding lookup is no matmul) plus 12·layers·hidden·seqlen for attention (PaLM's count)."""
    counts = count_parameters(model)
    config = model.config
    return 6 * (counts["linear"] + counts["lm_head"]) + 12 * config.num_hidden_layers * config.hidden_size * seqlen


# bf16 dense tensor-core peaks from the vendors' data sheets (no sparsity).
GPU_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def peak_flops(device: torch.device | str) -> tuple[float, str]:
    """The FLOP/s that MFU divides by, and where it came from: a data-sheet bf16 peak for a known
    GPU, else a measured large matmul (fp32 on CPU), which is the honest ceiling there."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_BF16_PEAK.items():
            if key in name:
                return value, f"{name} bf16 data-sheet peak"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best, f"measured {n}³ {str(dtype).replace('torch.', '')} matmul on {device.type}"


# --------------------------------------------------------------------------- the job


@dataclass
class PretrainResult:
    arch: str
    size: str
    out_dir: Path
    params: dict
    train: TrainResult
    val_loss: float | None
    flops_per_token: float
    peak_flops: float
    peak_source: str
    world: int = 1  # processes: tokens/s counts all of them, the peak is one device's

    @property
    def mfu(self) -> float:
        return self.flops_per_token * self.train.tokens_per_second / (self.peak_flops * self.world)

    def summary(self) -> dict:
        return {"arch": self.arch, "size": self.size, "params": self.params, "steps": self.train.steps,
                "tokens": self.train.tokens, "train_seconds": self.train.train_seconds,
                "tokens_per_second": self.train.tokens_per_second, "val_loss": self.val_loss,
                "val_ppl": math.exp(self.val_loss) if self.val_loss is not None else None,
                "flops_per_token": self.flops_per_token, "mfu": self.mfu, "peak_flops": self.peak_flops,
                "peak_source": self.peak_source, "model_dir": str(self.out_dir / "model")}


def pretrain(config: PretrainConfig, train_sequences: Tensor, out_dir, vocab_size: int,
             val_tokens: Tensor | None = None, tokenizer=None, seed: int | None = None,
             callbacks=()) -> PretrainResult:
    """Train one model from scratch; resumes from ``out_dir`` when it holds a checkpoint.

    ``train_sequences`` is ``[n, seqlen]``; ``val_tokens`` a 1-D held-out stream, scored in
    chunks of ``seqlen`` during training (``eval_every``) and at the end.
    """
    out_dir = Path(out_dir)
    if train_sequences.dim() != 2 or train_sequences.shape[1] != config.seqlen:
        raise SpectraConfigError(f"training sequences must be [n, {config.seqlen}], got {tuple(train_sequences.shape)}")
    if int(train_sequences.max()) >= vocab_size:
        raise SpectraConfigError(f"token id {int(train_sequences.max())} is outside the vocabulary of {vocab_size}: "
                                 "the data was tokenized with a larger vocabulary than the model has")
    train = config.train
    seed = train.seed if seed is None else seed
    model = build_model(config.arch, config.size, vocab_size, context=config.seqlen, shards=config.shards, seed=seed)
    total = total_steps_for(config)
    optim = config.optim(total)
    train_config = TrainConfig(**{**asdict(train), "optim": optim, "steps": total, "tokens": None,
                                  "eval_seqlen": config.seqlen})
    lr_lambda = None
    wd_lambda = None
    if config.effective_schedule == "spectra":
        lr_lambda = spectra_lr_lambda(total, optim, config.lr_drop_at, config.lr_drop_factor)
        wd_lambda = weight_decay_lambda(total, config.weight_decay_off_at)
    flops = flops_per_token(model, config.seqlen)
    device = torch.device(train.device) if train.device != "auto" else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak, source = peak_flops(device)
    trainer = Trainer(model, LanguageModelLoss(), train_sequences, train_config, out_dir, eval_ids=val_tokens,
                      lr_lambda=lr_lambda, weight_decay_lambda=wd_lambda, callbacks=callbacks,
                      flops_per_token=flops, peak_flops=peak)
    result = trainer.run()
    val_loss = None
    finals = [r for r in result.records if "eval_ppl" in r]
    if finals:
        val_loss = math.log(finals[-1]["eval_ppl"])
    trained = PretrainResult(config.arch, config.size, out_dir, count_parameters(trainer.model), result, val_loss,
                             flops, peak, source, trainer.world)
    state = trainer.full_model_state()  # every rank takes part; FSDP holds shards, not the model
    if trainer.rank == 0:
        final = build_model(config.arch, config.size, vocab_size, context=config.seqlen, shards=config.shards)
        final.load_state_dict(state)
        save_spectra_model(final.eval(), out_dir / "model", tokenizer)
        atomic_write_json(out_dir / "pretrain.json", {"config": _jsonable(asdict(config)), **trained.summary()})
    return trained


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))

"""A generic trainer for distillation and pretraining.

What it owns: the optimizer (AdamW, one parameter group per learning rate), the warmup then
cosine/linear schedule, gradient accumulation and clipping, bf16 autocast on GPU, gradient
checkpointing, torchrun DDP or FSDP, atomic checkpoints that resume to the same loss curve,
a tqdm bar, a JSONL log and periodic perplexity. What it does not own: the loss
(``loss_fn(model, input_ids) -> (loss, parts)``) and the data (a ``[n, seqlen]`` tensor).

Exact resume: a checkpoint holds the model, optimizer and scheduler states, the step, the
data sampler's (epoch, position), and every rank's RNG states; the order of the data is a
pure function of (seed, epoch), so a resumed run computes what the uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..utils.errors import TritiumError
from ..utils.hardware import cpu_precision_hint, uses_bf16, warn_if_emulated_bf16
from ..utils.io import atomic_directory, atomic_write_text
from .data import SequenceSampler, TrainDataError, check_context

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
DISTRIBUTED = ("auto", "none", "ddp", "fsdp")


class TrainConfigError(TritiumError, ValueError):
    """A training setting that cannot work; the message says what to change."""


@dataclass
class OptimConfig:
    lr: float = 1e-4  # the main group (latent weights, or every weight in pretraining)
    lr_quant: float | None = None  # DLT's α and γ; None = lr
    lr_float: float | None = None  # float parameters that train beside the quantized ones; None = lr
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # the decay ends at lr·min_lr_ratio
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.schedule not in SCHEDULES:
            raise TrainConfigError(f"schedule {self.schedule!r} is unknown: use one of {SCHEDULES}")
        for name in ("lr", "lr_quant", "lr_float"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise TrainConfigError(f"{name} must be positive, got {value}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise TrainConfigError("warmup_steps must be ≥ 0 and min_lr_ratio in [0, 1]")


@dataclass
class TrainConfig:
    steps: int | None = None  # optimizer steps; or give tokens and the trainer derives them
    tokens: int | None = None
    micro_batch_size: int = 4  # sequences per forward on each process
    grad_accum: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: str = "auto"  # auto: bf16 autocast where the device has bf16 hardware (GPU, AMX/AVX512-BF16), else fp32
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0  # steps; 0 = only at the end
    keep_checkpoints: int = 1
    eval_every: int = 0  # steps; 0 = only at the end (if eval data is given)
    eval_seqlen: int = 2048
    eval_limit: int | None = None
    log_every: int = 1
    seed: int = 0
    distributed: str = "auto"  # auto: DDP under torchrun, nothing otherwise
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.optim, dict):
            self.optim = build_dataclass(OptimConfig, self.optim, "optim")
        if self.precision not in PRECISIONS:
            raise TrainConfigError(f"precision {self.precision!r} is unknown: use one of {PRECISIONS}")
        if self.distributed not in DISTRIBUTED:
            raise TrainConfigError(f"distributed {self.distributed!r} is unknown: use one of {DISTRIBUTED}")
        if self.steps is None and self.tokens is None:
            raise TrainConfigError("give a training budget: steps or tokens")
        for name in ("micro_batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be at least 1, got {getattr(self, name)}")


def build_dataclass(cls, values: dict, what: str):
    """``cls(**values)`` with a clear error for keys the dataclass does not have."""
    allowed = set(cls.__dataclass_fields__)
    unknown = set(values) - allowed
    if unknown:
        raise TrainConfigError(f"{what} has no option(s) {sorted(unknown)}; its options are {sorted(allowed)}")
    return cls(**values)


def lr_multiplier(step: int, total: int, optim: OptimConfig) -> float:
    """Linear warmup to 1, then cosine or linear decay to ``min_lr_ratio`` at ``total``."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    span = max(1, total - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1 - progress
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * shape


def default_param_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """Trainable parameters split by role: latent quantized weights, DLT α/γ, everything else in float.

    Weight decay applies to matrices only, never to scales, shifts, norms or biases.
    """
    from .dlt import quant_parameters

    latent, quant = quant_parameters(model)
    taken = {id(p) for p in latent + quant}
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    groups = []
    latent = [p for p in latent if p.requires_grad]
    quant = [p for p in quant if p.requires_grad]
    if latent:
        groups.append({"name": "latent", "params": [p for p in latent if p.dim() >= 2], "lr": optim.lr,
                       "weight_decay": optim.weight_decay})
        groups.append({"name": "latent_bias", "params": [p for p in latent if p.dim() < 2], "lr": optim.lr,
                       "weight_decay": 0.0})
    if quant:
        groups.append({"name": "quant", "params": quant, "lr": optim.lr_quant or optim.lr, "weight_decay": 0.0})
    float_lr = optim.lr_float or optim.lr
    groups.append({"name": "float", "params": [p for p in other if p.dim() >= 2], "lr": float_lr,
                   "weight_decay": optim.weight_decay})
    groups.append({"name": "float_1d", "params": [p for p in other if p.dim() < 2], "lr": float_lr,
                   "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise TrainConfigError("the model has no trainable parameter (every requires_grad is False)")
    return groups


@dataclass
class TrainResult:
    steps: int
    tokens: int
    records: list[dict]
    train_seconds: float  # time inside optimizer steps only (no eval, no checkpoint)
    out_dir: Path
    resumed_from: int | None = None
    start_tokens: int = 0  # tokens already seen at the checkpoint this run resumed from

    @property
    def tokens_per_second(self) -> float:
        trained = self.tokens - self.start_tokens
        return trained / self.train_seconds if self.train_seconds > 0 else float("nan")

    def losses(self) -> list[float]:
        return [r["loss"] for r in self.records if "loss" in r]


# --------------------------------------------------------------------------- distributed


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _init_distributed(device: torch.device) -> None:
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


# --------------------------------------------------------------------------- the trainer


Callback = Callable[["Trainer", dict], None]


class Trainer:
    """Train ``model`` on ``sequences`` with ``loss_fn``; ``run()`` resumes from ``out_dir`` if it holds a checkpoint."""

    CHECKPOINTS = "checkpoints"
    LOG = "log.jsonl"

    def __init__(self, model: nn.Module, loss_fn, sequences: Tensor, config: TrainConfig, out_dir,
                 param_groups: list[dict] | None = None, eval_ids: Tensor | None = None,
                 lr_lambda: Callable[[int], float] | None = None,
                 weight_decay_lambda: Callable[[int], float] | None = None, callbacks: Iterable[Callback] = (),
                 after_backward: Iterable[Callable[["Trainer"], None]] = (),
                 step_metrics: Iterable[Callable[["Trainer"], dict]] = (),
                 flops_per_token: float | None = None, peak_flops: float | None = None):
        if sequences.dim() != 2 or sequences.shape[0] == 0:
            raise TrainDataError(f"training sequences must be a non-empty [n, seqlen] tensor, got {tuple(sequences.shape)}")
        check_context(model, sequences.shape[1])
        if eval_ids is not None:
            self._check_eval(model, eval_ids, config)
        self.config = config
        self.out_dir = Path(out_dir)
        self.sequences = sequences
        self.seqlen = sequences.shape[1]
        self.loss_fn = loss_fn
        self.eval_ids = eval_ids
        self.callbacks = list(callbacks)
        # with both, every log record carries the model FLOPs utilisation beside tokens/s
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.after_backward = list(after_backward)
        self.step_metrics = list(step_metrics)  # each adds its values to every step's record, logged with it
        self.device = self._pick_device(config.device)
        self.distributed = self._distributed_mode(config.distributed)
        if self.distributed != "none":
            _init_distributed(self.device)
        self.rank, self.world = _world()
        self.global_batch = self.world * config.micro_batch_size * config.grad_accum
        self.total_steps = self._total_steps()
        self.use_bf16 = uses_bf16(config.precision, self.device)
        if self.rank == 0:
            warn_if_emulated_bf16(config.precision, self.device)

        self.model = model.to(self.device)  # the unwrapped module: evaluation and export read it
        if hasattr(loss_fn, "to"):
            loss_fn.to(self.device)
        if config.gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5 renamed it
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            elif hasattr(model, "gradient_checkpointing_enable"):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            else:
                raise TrainConfigError("gradient_checkpointing needs a transformers model (activation checkpointing)")
        model.train()
        groups = param_groups or default_param_groups(model, config.optim)
        self._named_before_wrap = list(model.named_parameters())
        self.group_names = [g.get("name", f"group{i}") for i, g in enumerate(groups)]
        self.wrapped = self._wrap(model)
        groups = self._regroup(model, groups)
        del self._named_before_wrap  # it holds the unsharded parameters
        self.optimizer = torch.optim.AdamW(
            [{k: v for k, v in g.items() if k != "name"} for g in groups], lr=config.optim.lr,
            betas=config.optim.betas, eps=config.optim.eps, weight_decay=config.optim.weight_decay,
        )
        lam = lr_lambda or (lambda step: lr_multiplier(step, self.total_steps, config.optim))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lam)
        # A pure function of the step, applied before every update, so a resumed run gets it right too.
        self.weight_decay_lambda = weight_decay_lambda
        self._base_weight_decay = [g["weight_decay"] for g in self.optimizer.param_groups]
        self.sampler = SequenceSampler(sequences.shape[0], seed=config.seed)
        self.step = 0
        self.tokens = 0
        self.records: list[dict] = []
        self.resumed_from: int | None = None
        torch.manual_seed(config.seed + self.rank)

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _check_eval(model, eval_ids: Tensor, config: TrainConfig) -> None:
        """Fail before training, not after the first hour, when the evaluation cannot run."""
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if context is not None and config.eval_seqlen > context:
            raise TrainConfigError(f"eval_seqlen {config.eval_seqlen} exceeds the model's context of {context} "
                                   f"tokens: set eval_seqlen ≤ {context}")
        if eval_ids.numel() < config.eval_seqlen:
            raise TrainConfigError(f"the evaluation text has {eval_ids.numel()} tokens, fewer than one chunk of "
                                   f"{config.eval_seqlen}: lower eval_seqlen or use a longer text")

    @staticmethod
    def _pick_device(name: str) -> torch.device:
        if name != "auto":
            return torch.device(name)
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")

    @staticmethod
    def _distributed_mode(mode: str) -> str:
        world = int(os.environ.get("WORLD_SIZE", 1))
        if mode == "auto":
            return "ddp" if world > 1 or (dist.is_available() and dist.is_initialized()) else "none"
        if mode in ("ddp", "fsdp") and world == 1 and not dist.is_initialized():
            raise TrainConfigError(f"distributed={mode!r} needs several processes: launch with torchrun --nproc_per_node N")
        return mode

    def _total_steps(self) -> int:
        cfg = self.config
        if cfg.steps is not None:
            if cfg.steps < 1:
                raise TrainConfigError(f"steps must be at least 1, got {cfg.steps}")
            return cfg.steps
        per_step = self.global_batch * self.seqlen
        if cfg.tokens < per_step:
            raise TrainConfigError(f"a budget of {cfg.tokens} tokens is less than one step of {per_step} tokens "
                                   f"({self.global_batch} sequences × {self.seqlen}): raise tokens or shrink the batch")
        return cfg.tokens // per_step

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.distributed == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)
        if self.distributed == "fsdp":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            from ..models.adapters import decoder_layout

            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
                if self.use_bf16 else MixedPrecisionPolicy()
            for block in decoder_layout(model).blocks:
                fully_shard(block, mp_policy=policy)
            fully_shard(model, mp_policy=policy)
            return model
        return model

    def _regroup(self, model: nn.Module, groups: list[dict]) -> list[dict]:
        """FSDP's fully_shard replaces every parameter by a sharded one: find each group's members again by name."""
        if self.distributed != "fsdp":
            return groups
        group_of = {}
        for g, group in enumerate(groups):
            group_of.update({id(p): g for p in group["params"]})
        names = {name: group_of[id(p)] for name, p in self._named_before_wrap if id(p) in group_of}
        rebuilt = [{**group, "params": []} for group in groups]
        for name, p in model.named_parameters():
            if name in names:
                rebuilt[names[name]]["params"].append(p)
        return rebuilt

    # ------------------------------------------------------------------ one step

    def _autocast(self):
        if not self.use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _micro_batches(self) -> list[Tensor]:
        """This rank's micro-batches of the next global batch (the same global batch on every world size)."""
        cfg = self.config
        indices = self.sampler.next_indices(self.global_batch)
        out = []
        mb = cfg.micro_batch_size
        for m in range(cfg.grad_accum):
            start = (m * self.world + self.rank) * mb
            out.append(self.sequences[indices[start : start + mb]])
        return out

    def train_step(self) -> dict:
        cfg = self.config
        start = time.perf_counter()
        parts_sum: dict[str, float] = {}
        loss_sum = 0.0
        batches = self._micro_batches()
        for m, batch in enumerate(batches):
            last = m == len(batches) - 1
            sync = contextlib.nullcontext()
            if self.distributed == "ddp" and not last:
                sync = self.wrapped.no_sync()
            elif self.distributed == "fsdp":
                self.wrapped.set_requires_gradient_sync(last)
            with sync:
                with self._autocast():
                    loss, parts = self.loss_fn(self.wrapped, batch.to(self.device, non_blocking=True))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the loss is {loss.item()} at step {self.step}: lower the learning "
                                             "rate or check the data")
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach().float().item()
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v)
        for hook in self.after_backward:
            hook(self)
        grad_norm = None
        if cfg.optim.max_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), cfg.optim.max_grad_norm))
        lrs = {name: g["lr"] for name, g in zip(self.group_names, self.optimizer.param_groups)}
        if self.weight_decay_lambda is not None:
            factor = self.weight_decay_lambda(self.step)
            for group, base in zip(self.optimizer.param_groups, self._base_weight_decay):
                group["weight_decay"] = base * factor
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += self.global_batch * self.seqlen
        values = torch.tensor([loss_sum] + list(parts_sum.values()), dtype=torch.float64) / cfg.grad_accum
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        record = {"step": self.step, "tokens": self.tokens, "loss": float(values[0]),
                  **{k: float(v) for k, v in zip(parts_sum, values[1:])},
                  "lr": lrs, "weight_decay": max(g["weight_decay"] for g in self.optimizer.param_groups),
                  "grad_norm": grad_norm, "step_seconds": time.perf_counter() - start}
        return record

    # ------------------------------------------------------------------ eval, log, checkpoints

    def evaluate(self) -> dict:
        from ..eval.perplexity import perplexity

        self.model.eval()
        try:
            with self._autocast():
                # every rank evaluates (FSDP needs all of them in each forward); rank 0 logs
                result = perplexity(self.model, self.eval_ids, seqlen=self.config.eval_seqlen,
                                    limit=self.config.eval_limit, progress=False)
        finally:
            self.model.train()
        return {"eval_ppl": result.ppl, "eval_chunks": result.n_chunks}

    def _write_log(self) -> None:
        if self.rank == 0:
            atomic_write_text(self.out_dir / self.LOG, "".join(json.dumps(r) + "\n" for r in self.records))

    def _state_dicts(self) -> tuple[dict, dict]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(self.model, self.optimizer, options=options)

    def full_model_state(self) -> dict:
        """The whole model's state on the CPU, gathered from every shard (a collective under FSDP)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def checkpoint_dir(self, step: int) -> Path:
        return self.out_dir / self.CHECKPOINTS / f"step-{step:08d}"

    def save_checkpoint(self) -> Path | None:
        model_state, optim_state = self._state_dicts()  # a collective under FSDP: every rank calls it
        rngs = [_rng_state()]
        if self.world > 1:
            rngs = [None] * self.world
            dist.all_gather_object(rngs, _rng_state())
        folder = self.checkpoint_dir(self.step)
        if self.rank == 0:
            state = {"step": self.step, "tokens": self.tokens, "scheduler": self.scheduler.state_dict(),
                     "sampler": self.sampler.state_dict(), "rng": rngs, "world": self.world,
                     "global_batch": self.global_batch, "config": asdict(self.config)}
            with atomic_directory(folder) as tmp:
                torch.save(model_state, tmp / "model.pt")
                torch.save(optim_state, tmp / "optimizer.pt")
                torch.save(state, tmp / "trainer.pt")
            self._write_log()
            old = sorted((self.out_dir / self.CHECKPOINTS).glob("step-*"))[: -self.config.keep_checkpoints]
            for path in old:
                shutil.rmtree(path, ignore_errors=True)
        if self.world > 1:
            dist.barrier()
        return folder

    def latest_checkpoint(self) -> Path | None:
        found = sorted((self.out_dir / self.CHECKPOINTS).glob("step-[0-9]*"))
        return found[-1] if found else None

    def load_checkpoint(self, folder: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        state = torch.load(folder / "trainer.pt", weights_only=False)
        if state["global_batch"] != self.global_batch:
            raise TrainConfigError(
                f"{folder} was trained with a global batch of {state['global_batch']} sequences, this run has "
                f"{self.global_batch}: resume with the same micro_batch_size × grad_accum × processes"
            )
        model_state = torch.load(folder / "model.pt", weights_only=False)
        optim_state = torch.load(folder / "optimizer.pt", weights_only=False)
        set_state_dict(self.model, self.optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.tokens = state["step"], state["tokens"]
        rngs = state["rng"]
        _set_rng_state(rngs[self.rank] if len(rngs) == self.world else rngs[0])
        log = self.out_dir / self.LOG
        if log.is_file():
            self.records = [r for r in map(json.loads, log.read_text().splitlines()) if r.get("step", 0) <= self.step]
        self.resumed_from = self.step

    # ------------------------------------------------------------------ the loop

    def run(self, resume: bool = True) -> TrainResult:
        from ..utils.progress import progress_bar

        cfg = self.config
        latest = self.latest_checkpoint() if resume else None
        if latest is not None:
            self.load_checkpoint(latest)
        start_tokens = self.tokens
        train_seconds = 0.0
        bar = progress_bar(total=self.total_steps, initial=self.step, desc="train", unit="step",
                           enabled=cfg.progress and self.rank == 0, dynamic_ncols=True)
        if self.device.type == "cpu" and cfg.progress and self.rank == 0:
            hint = cpu_precision_hint(cfg.precision)
            if hint and cfg.precision != "bf16":  # the bf16 case was a warning already, when the trainer was made
                bar.write(f"tritium: {hint}", file=sys.stderr)
        while self.step < self.total_steps:
            record = self.train_step()
            train_seconds += record["step_seconds"]
            record["tokens_per_second"] = (self.tokens - start_tokens) / train_seconds
            for metric in self.step_metrics:
                record |= metric(self)
            if self.flops_per_token and self.peak_flops:
                # tokens/s counts every process; the peak is one device's
                record["mfu"] = self.flops_per_token * record["tokens_per_second"] / (self.peak_flops * self.world)
            end = self.step == self.total_steps
            if self.eval_ids is not None and ((cfg.eval_every and self.step % cfg.eval_every == 0) or end):
                record |= self.evaluate()
            if self.step % cfg.log_every == 0 or end or "eval_ppl" in record:
                self.records.append(record)
                self._write_log()
            for callback in self.callbacks:
                callback(self, record)
            bar.update(1)
            bar.set_postfix({k: f"{record[k]:.4g}" for k in record
                             if k in ("loss", "off", "kl", "ce", "eval_ppl", "tokens_per_second", "mfu")}, refresh=False)
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or end:
                self.save_checkpoint()
        bar.close()
        return TrainResult(self.step, self.tokens, self.records, train_seconds, self.out_dir, self.resumed_from,
                           start_tokens)

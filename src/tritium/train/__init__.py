"""Training: DLT and uniform QAT fake-quant linears, distillation losses, data streams, a generic trainer, TernaryLLM distillation."""

from .data import (  # noqa: F401
    SequenceSampler,
    TeacherCorpus,
    TeacherSamplingConfig,
    TrainDataError,
    generate_teacher_corpus,
    load_sequences,
    pack_tokens,
)
from .dlt import (  # noqa: F401
    DLTConfig,
    DLTLinear,
    FakeQuantLinear,
    dlt_codes,
    dlt_weight,
    fold_,
    quant_parameters,
    to_dlt_,
    to_fake_quant_,
    to_uniform_qat_,
)
from .qat import UniformQATLinear, uniform_qat_weight  # noqa: F401
from .losses import DistillationInputError, DistillationLoss, LanguageModelLoss, LossConfig, kl_logits, off_loss  # noqa: F401
from .trainer import OptimConfig, TrainConfig, TrainConfigError, Trainer, TrainResult, lr_multiplier  # noqa: F401

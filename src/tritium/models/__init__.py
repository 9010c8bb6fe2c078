"""Model loaders and architecture adapters (TriLM/FloatLM definitions join them later)."""

from .adapters import (  # noqa: F401
    BLOCK_LINEARS,
    KNOWN_FAMILIES,
    DecoderLayout,
    ScaleGroup,
    UnsupportedArchitectureError,
    decoder_layout,
)
from .loader import NAMED_MODELS, ModelSource, ModelSourceError, load_model, load_tokenizer, resolve_model_source  # noqa: F401
from .online_rotation import (  # noqa: F401
    OnlineRotationError,
    OnlineRotationSettings,
    add_online_rotations_,
    install_online_rotations,
    online_rotation_settings,
)
from .tiny import TINY_FAMILIES, tiny_config, tiny_model, tiny_tokenizer, train_byte_level_bpe  # noqa: F401

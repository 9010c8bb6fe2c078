"""Running quantized models: the lean greedy decode loop."""

from .fast_decode import (ContextLimitError, DecodeResult, FastDecoder, UnsupportedForFastDecode, context_limit,
                          fast_decode_unsupported_reason, new_tokens_within_context)

__all__ = ["ContextLimitError", "DecodeResult", "FastDecoder", "UnsupportedForFastDecode", "context_limit",
           "fast_decode_unsupported_reason", "new_tokens_within_context"]

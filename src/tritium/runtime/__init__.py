"""Running quantized models: the lean greedy decode loop."""

from .fast_decode import DecodeResult, FastDecoder, UnsupportedForFastDecode, fast_decode_unsupported_reason

__all__ = ["DecodeResult", "FastDecoder", "UnsupportedForFastDecode", "fast_decode_unsupported_reason"]

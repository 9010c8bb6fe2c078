"""Writers for formats that runtimes load: HF safetensors (and GGUF, later)."""

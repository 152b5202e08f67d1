"""Exports of quantized models to other runtimes: GGUF for llama.cpp (gguf_llama.py)."""
from lowbit.export.gguf_llama import export_gguf, export_model

__all__ = ["export_gguf", "export_model"]

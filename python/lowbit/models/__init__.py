"""Loaders for the real models the project is tested on."""
from lowbit.models.llama2c import Llama, LlamaConfig, Tokenizer, load_llama2c, load_tokenizer

__all__ = ["Llama", "LlamaConfig", "Tokenizer", "load_llama2c", "load_tokenizer"]

"""Tokenizers without third-party packages: Hugging Face ``tokenizer.json`` (BPE, both the
SentencePiece-style and the byte-level family). See ``hf.py`` for what is supported."""
from lowbit.tokenizers.hf import HFTokenizer, load_hf_tokenizer

__all__ = ["HFTokenizer", "load_hf_tokenizer"]

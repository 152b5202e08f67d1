"""Loaders for the real models the project is tested on."""
from lowbit.models.llama2c import Llama, LlamaConfig, Tokenizer, load_llama2c, load_tokenizer
from lowbit.models.resnet_cifar import ResNetCifar, load_resnet_cifar

__all__ = ["ResNetCifar", "load_resnet_cifar", "Llama", "LlamaConfig", "Tokenizer", "load_llama2c", "load_tokenizer"]

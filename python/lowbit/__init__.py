"""lowbit: post-training quantization for PyTorch with a C++ engine."""
from lowbit import openblas as _openblas

_openblas.configure_for_command()  # the lowbit command: before torch loads OpenBLAS

from lowbit import _C  # noqa: E402,F401  (loads liblowbit_ops.so: registers torch.ops.lowbit.*)
from lowbit._C import ConfigError, ConfigTypeError  # noqa: E402  (ValueError; ValueError and TypeError)
from lowbit.formats import (FORMATS, GRANULARITIES, compute_scales, decode, encode, fake_quant,
                            fake_quant_dynamic, isa, available_isas, pack, packed_row_bytes, set_isa, unpack)

from lowbit import algorithms  # noqa: F401  (registers gptq, awq, smoothquant, ofmr)
from lowbit.api import algorithm_register, calibrate, convert, model_bytes, quantize, set_compute, summary
from lowbit.configs import BUILTIN_CONFIG_NAMES, builtin_config
from lowbit.serialization import FormatError, load, save
from lowbit.torchscript import export_torchscript
from lowbit.checkpoints import load_hf_model
from lowbit.pretrained import load_pretrained, save_pretrained
from lowbit.export import export_gguf

__version__ = _C.__version__
_openblas.warn_if_generic()


def __getattr__(name):
    # Built-in configs: a fresh copy on every access (PEP 562).
    if name in BUILTIN_CONFIG_NAMES:
        return builtin_config(name)
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")


def validate_config(config):
    """Checks a quantize() config with the C++ rules; returns its normalized form.

    Raises lowbit.ConfigError (a ValueError) for a bad value or combination and
    lowbit.ConfigTypeError (a ConfigError and a TypeError) for a wrong type; the message
    names the key path, the value and what is allowed.
    """
    return _C.parse_config(config)
__all__ = ["ConfigError", "ConfigTypeError", "FormatError", "quantize", "calibrate", "convert", "set_compute", "summary", "model_bytes", "algorithm_register", "save", "load", "export_torchscript", "export_gguf", "load_hf_model", "load_pretrained", "save_pretrained", "BUILTIN_CONFIG_NAMES", "builtin_config", "validate_config", "FORMATS", "GRANULARITIES", "compute_scales", "decode", "encode", "fake_quant",
           "fake_quant_dynamic", "isa", "available_isas", "pack", "packed_row_bytes", "set_isa", "unpack"]

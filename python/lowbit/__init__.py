"""lowbit: post-training quantization for PyTorch with a C++ engine."""
from lowbit import _C  # noqa: F401  (loads liblowbit_ops.so: registers torch.ops.lowbit.*)
from lowbit.formats import (FORMATS, GRANULARITIES, compute_scales, decode, encode, fake_quant,
                            fake_quant_dynamic, isa, pack, packed_row_bytes, set_isa, unpack)

__version__ = _C.__version__
__all__ = ["FORMATS", "GRANULARITIES", "compute_scales", "decode", "encode", "fake_quant",
           "fake_quant_dynamic", "isa", "pack", "packed_row_bytes", "set_isa", "unpack"]

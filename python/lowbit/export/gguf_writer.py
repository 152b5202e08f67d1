"""The GGUF container (version 3), written from scratch after its published layout.

File: magic "GGUF", uint32 version, uint64 tensor count, uint64 metadata count; the
metadata (key string, uint32 value kind, value); the tensor infos (name string, uint32
rank, uint64 dimensions innermost first, uint32 ggml type, uint64 offset into the data
section); zero padding to ``general.alignment``; the data section, each tensor starting
at a multiple of the alignment. Little-endian; strings are a uint64 byte length then
UTF-8 bytes. The file is written to a temporary file in the destination folder, flushed
to disk and renamed over the destination (an interrupted export leaves no half file).
"""
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

MAGIC = b"GGUF"
VERSION = 3
ALIGNMENT = 32

# metadata value kinds
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALAR = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i", FLOAT32: "<f",
           BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}

# ggml tensor types and their (block length, bytes per block)
F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K = 0, 1, 2, 3, 8, 12, 14
TYPE_NAMES = {F32: "F32", F16: "F16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q8_0: "Q8_0", Q4_K: "Q4_K", Q6_K: "Q6_K"}
BLOCK = {F32: (1, 4), F16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34), Q4_K: (256, 144),
         Q6_K: (256, 210)}


def tensor_nbytes(ggml_type, shape):
    """Bytes of a tensor of ``shape`` (outermost first, as torch) in ``ggml_type``."""
    blk, size = BLOCK[ggml_type]
    if shape[-1] % blk:
        raise ValueError(f"shape {tuple(shape)}: the last dimension must be a multiple of {blk} for "
                         f"{TYPE_NAMES[ggml_type]}")
    n = 1
    for d in shape:
        n *= d
    return n // blk * size


def _string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(kind, v):
    if kind == STRING:
        return _string(v)
    if kind == ARRAY:
        elem, items = v
        out = [struct.pack("<IQ", elem, len(items))]
        if elem == STRING:
            out += [_string(x) for x in items]
        else:
            out.append(np.asarray(items, dtype=np.dtype(_SCALAR[elem])).tobytes())
        return b"".join(out)
    return struct.pack(_SCALAR[kind], v)


class GGUFWriter:
    """Collects metadata and tensors, then ``write(path)``. Tensor data is given as bytes
    (or a callable returning bytes, produced while writing: one tensor in memory at a time)."""

    def __init__(self, alignment=ALIGNMENT):
        self.alignment = alignment
        self.kv = []        # (key, kind, value)
        self.tensors = []   # (name, shape, ggml type, nbytes, data or callable)
        self.add("general.alignment", UINT32, alignment)

    def add(self, key, kind, value):
        if any(k == key for k, _, _ in self.kv):
            raise ValueError(f"GGUF metadata: key {key!r} is given twice")
        if kind not in _SCALAR and kind not in (STRING, ARRAY):
            raise ValueError(f"GGUF metadata {key!r}: value kind {kind!r} is unknown")
        self.kv.append((key, kind, value))

    def add_tensor(self, name, shape, ggml_type, data):
        if any(t[0] == name for t in self.tensors):
            raise ValueError(f"GGUF tensor {name!r} is given twice")
        self.tensors.append((name, tuple(int(d) for d in shape), ggml_type, tensor_nbytes(ggml_type, shape), data))

    def _pad(self, n):
        return (-n) % self.alignment

    def header(self):
        parts = [MAGIC, struct.pack("<IQQ", VERSION, len(self.tensors), len(self.kv))]
        for key, kind, value in self.kv:
            parts += [_string(key), struct.pack("<I", kind), _value(kind, value)]
        offset = 0
        for name, shape, gtype, nbytes, _ in self.tensors:
            parts += [_string(name), struct.pack("<I", len(shape)),
                      struct.pack(f"<{len(shape)}Q", *reversed(shape)), struct.pack("<IQ", gtype, offset)]
            offset += nbytes + self._pad(nbytes)
        head = b"".join(parts)
        return head + b"\0" * self._pad(len(head))

    def write(self, path, progress=None):
        """Writes the file atomically; ``progress(name, nbytes)`` is called per tensor."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.header())
                for name, shape, gtype, nbytes, data in self.tensors:
                    raw = data() if callable(data) else data
                    if len(raw) != nbytes:
                        raise ValueError(f"GGUF tensor {name!r}: {len(raw)} bytes, expected {nbytes} for "
                                         f"{TYPE_NAMES[gtype]} {shape}")
                    f.write(raw)
                    f.write(b"\0" * self._pad(nbytes))
                    if progress is not None:
                        progress(name, nbytes)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return path.stat().st_size

"""Mutation test of lowbit.load: over 2,000 damaged or hostile versions of real saved models.

Models: stories260K quantized with INT4_GPTQ_WEIGHT_QUANT_CFG, INT8_SMOOTHQUANT_CFG and
HIFP8_OFMR_CFG (calibrated on a few token batches) and a ResNet-20 with FP8_OFMR_CFG
(folded BatchNorms); synthetic stand-ins when the shared data folder is missing.

Mutations: byte flips anywhere, flips in the 8-byte header length and in the JSON header,
truncations, appended bytes, header length +-1..8, and structured changes of the "lowbit"
metadata and of the stored tensors, rewritten with a valid checksum (so that the
validator, not the checksum, has to catch them).

Every outcome must be a ValueError (lowbit.FormatError naming the file, or the ValueError
of a file/model mismatch naming the layer or tensor), or a model whose output equals the
saved model's exactly; never another exception type, never a crash, and a refused load
leaves the float model untouched. ``pytest -s`` prints the outcome table.
"""
import copy
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit
from lowbit.data import data_dir
from lowbit.modules.calibration import CalibLayer
from lowbit.modules.deploy import DeployLayer

TENSORS = "model.safetensors"
SEED = int(os.environ.get("LOWBIT_TEST_SEED", "1234"))
# mutations per saved model and kind (4 models: about 2,200 in all)
N_FLIP_ANY, N_FLIP_LEN, N_FLIP_HEADER, N_BITFLIP_HEADER, N_TRUNCATE, N_APPEND = 150, 24, 110, 60, 40, 24


def have_shared_data():
    return (data_dir() / "models" / "stories260K.bin").exists()


# ---- the saved models ----

class Saved:
    """A converted model saved once: its file's bytes, the stored tensors and metadata, the
    float template to load it into and its output on a fixed input."""

    def __init__(self, name, template, x, model, folder):
        self.name, self.template, self.x, self.folder = name, template, x, folder
        with torch.no_grad():
            self.out = model(x)
        lowbit.save(model, folder)
        self.data = (folder / TENSORS).read_bytes()
        self.header_len = int.from_bytes(self.data[:8], "little")
        names, tensors, keys, values = torch.ops.lowbit.load_safetensors(str(folder / TENSORS))
        self.tensors = dict(zip(names, tensors))
        self.meta = dict(zip(keys, values))
        self.info = json.loads(self.meta["lowbit"])
        self.float_model = copy.deepcopy(template)  # reused until a load succeeds


def _lm_models(root):
    from lowbit.eval import lm
    template, tok = lm.load_stories260k()
    calib = [t[:, :64] for t in lm.token_batches(tok, lm.CALIB_RANGE, limit=2)]
    x = lm.token_batches(tok, lm.EVAL_RANGE, limit=1)[0][:, :32]
    out = []
    for cfg_name in ("INT4_GPTQ_WEIGHT_QUANT_CFG", "INT8_SMOOTHQUANT_CFG", "HIFP8_OFMR_CFG"):
        cfg = getattr(lowbit, cfg_name)
        cfg["batch_num"] = len(calib)
        m = lowbit.quantize(copy.deepcopy(template), cfg)
        with torch.no_grad():
            for t in calib:
                m(t)
        lowbit.convert(m)
        out.append(Saved(f"stories260K/{cfg_name}", template, x, m, root / cfg_name))
    return out


def _resnet_model(root):
    from lowbit.eval import cifar
    template = cifar.load_resnet(20).eval()
    x, _ = cifar.test_set(limit=20)
    m = lowbit.quantize(copy.deepcopy(template), lowbit.FP8_OFMR_CFG)
    with torch.no_grad():
        m(x[:16])
    lowbit.convert(m)
    return Saved("resnet20/FP8_OFMR_CFG", template, x[16:], m, root / "resnet20")


class TinyLM(nn.Module):
    """Synthetic stand-in for stories260K: an embedding, two Linear blocks, an RMS-like norm."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(100, 64)
        self.w1, self.w2, self.out = nn.Linear(64, 96, bias=False), nn.Linear(96, 64, bias=False), nn.Linear(64, 100)
        self.norm = nn.Parameter(torch.rand(64) + 0.5)

    def forward(self, t):
        h = self.emb(t)
        h = h + self.w2(torch.relu(self.w1(h)))
        return self.out(h * self.norm)


def _synthetic_models(root):
    lm_t = TinyLM()
    calib = [torch.randint(0, 100, (1, 24), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    x = torch.randint(0, 100, (1, 24), generator=torch.Generator().manual_seed(9))
    out = []
    for cfg_name in ("INT4_GPTQ_WEIGHT_QUANT_CFG", "INT8_SMOOTHQUANT_CFG", "HIFP8_OFMR_CFG"):
        cfg = getattr(lowbit, cfg_name)
        cfg["batch_num"] = len(calib)
        m = lowbit.quantize(copy.deepcopy(lm_t), cfg)
        with torch.no_grad():
            for t in calib:
                m(t)
        lowbit.convert(m)
        out.append(Saved(f"tinylm/{cfg_name}", lm_t, x, m, root / cfg_name))
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)).eval()
    with torch.no_grad():
        for bn in (cnn[1], cnn[4]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    xs = torch.randn(20, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    m = lowbit.quantize(copy.deepcopy(cnn), lowbit.FP8_OFMR_CFG)
    with torch.no_grad():
        m(xs[:16])
    lowbit.convert(m)
    out.append(Saved("cnn/FP8_OFMR_CFG", cnn, xs[16:], m, root / "cnn"))
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    # the mutated files are rewritten thousands of times: in memory when /dev/shm is there
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="lowbit-mutations-", dir=shm))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("mutations")


@pytest.fixture(scope="module")
def saved_models(workdir):
    root = workdir / "saved"
    models = (_lm_models(root) + [_resnet_model(root)]) if have_shared_data() else _synthetic_models(root)
    # the unmutated files load back exactly (the reference every mutation is compared with)
    for s in models:
        with torch.no_grad():
            assert same(lowbit.load(copy.deepcopy(s.template), s.folder)(s.x), s.out), s.name
    return models


def same(a, b):
    """torch.equal, with NaN equal to NaN."""
    return (a.shape == b.shape and a.dtype == b.dtype
            and bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all()))


# ---- mutations ----

class Mutation:
    """kind: the table row; data: the file's bytes, or build: a callable writing the file;
    must_reject: a load that succeeds is not allowed even with an equal output;
    expect: a regex the rejection message must match."""

    def __init__(self, kind, what, data=None, build=None, must_reject=True, expect=None):
        self.kind, self.what, self.data, self.build = kind, what, data, build
        self.must_reject, self.expect = must_reject, expect


def byte_mutations(s, rng):
    data, n = s.data, s.header_len
    out = []

    def flip(pos, mask):
        b = bytearray(data)
        b[pos] ^= mask
        return bytes(b)

    def region(pos):
        return "length" if pos < 8 else "header" if pos < 8 + n else "data"

    for _ in range(N_FLIP_ANY):
        pos = rng.randrange(len(data))
        kind = f"flip anywhere -> {region(pos)}"
        out.append(Mutation(kind, f"byte {pos} ^= x", flip(pos, rng.randrange(1, 256)),
                            must_reject=region(pos) != "header",
                            expect=r"checksum mismatch" if region(pos) == "data" else None))
    for _ in range(N_FLIP_LEN):
        pos = rng.randrange(8)
        out.append(Mutation("flip header length", f"byte {pos}", flip(pos, rng.randrange(1, 256)),
                            expect=r"safetensors: "))
    for _ in range(N_FLIP_HEADER):
        pos = rng.randrange(8, 8 + n)
        out.append(Mutation("flip JSON header", f"byte {pos}", flip(pos, rng.randrange(1, 256)), must_reject=False))
    for _ in range(N_BITFLIP_HEADER):
        pos = rng.randrange(8, 8 + n)
        out.append(Mutation("bit flip JSON header", f"byte {pos}", flip(pos, 1 << rng.randrange(8)),
                            must_reject=False))
    cuts = {0, 1, 7, 8, 9, 8 + n - 1, 8 + n, 8 + n + 1, len(data) - 1}
    while len(cuts) < N_TRUNCATE:
        cuts.add(rng.randrange(len(data)))
    for cut in sorted(cuts):
        out.append(Mutation("truncate", f"to {cut} bytes", data[:cut], expect=r"safetensors: "))
    tails = [b" ", b"\x00", b"\n" * 8, b"{}", data[:8], data]
    while len(tails) < N_APPEND:
        tails.append(bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 8, 64, 4096]))))
    for tail in tails:
        out.append(Mutation("append bytes", f"{len(tail)} bytes", data + tail, expect=r"safetensors: "))
    out += header_rewrites(s)
    for d in [*range(-8, 0), *range(1, 9)]:
        out.append(Mutation("header length +-1..8", f"{d:+d}", (n + d).to_bytes(8, "little") + data[8:],
                            expect=r"safetensors: "))
    return out


def header_rewrites(s):
    """The JSON header re-serialized by hand. Kept content (order, spacing, escapes): the
    checksum still holds and the model loads; changed structure: the reader refuses it;
    changed content: the checksum does."""
    data, n = s.data, s.header_len
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    names = [k for k in header if k != "__metadata__"]
    out = []

    def file_of(h, kind, what, must_reject=True, expect=None, edit=lambda t: t, **dump):
        text = edit(json.dumps(h, **dump)).encode()
        text += b" " * (-(8 + len(text)) % 8)
        out.append(Mutation(kind, what, len(text).to_bytes(8, "little") + text + body, must_reject=must_reject,
                            expect=expect))

    file_of(dict(reversed(list(header.items()))), "header rewrite: same content", "entries reversed",
            must_reject=False)
    k = names[0]
    file_of(header, "header rewrite: same content", f"indented, {k!r} spelled with a \\u escape",
            must_reject=False, indent=3, edit=lambda t: t.replace(json.dumps(k), '"\\u%04x%s"' % (ord(k[0]), k[1:]), 1))
    file_of(header, "header rewrite: structure", "a non-ASCII character where a value belongs",
            expect=r"safetensors: header is not valid JSON",
            edit=lambda t: t.replace('"dtype": ', '"dtype": \u00e9', 1))
    h = copy.deepcopy(header)
    h[names[0]]["extra"] = 1
    file_of(h, "header rewrite: structure", "unknown tensor field", expect=r"unknown field")
    h = copy.deepcopy(header)
    h["__metadata__"]["lowbit.checksum"] = 5
    file_of(h, "header rewrite: structure", "non-string metadata value", expect=r"not a string")
    h = copy.deepcopy(header)
    h[names[0]]["shape"] = [2 ** 62, 2 ** 62]
    file_of(h, "header rewrite: structure", "huge shape", expect=r"overflow|do not match")
    h = copy.deepcopy(header)
    h[names[0]]["data_offsets"] = [0, 2 ** 63]
    file_of(h, "header rewrite: structure", "offset 2**63", expect=r"data_offsets|bad integer")
    h = copy.deepcopy(header)
    del h["__metadata__"]["lowbit.checksum"]
    h[names[1]]["data_offsets"] = h[names[0]]["data_offsets"]  # two tensors on the same bytes
    file_of(h, "header rewrite: structure", "overlapping tensors, no checksum", expect=r"overlap|gap|bytes")
    same_size = defaultdict(list)
    for k in names:
        same_size[(header[k]["dtype"], tuple(header[k]["shape"]))].append(k)
    def raw(k):
        begin, end = header[k]["data_offsets"]
        return body[begin:end]
    pairs = [(a, b) for v in same_size.values() for a, b in zip(v, v[1:]) if raw(a) != raw(b)]
    if pairs:
        a, b = pairs[0]
        h = copy.deepcopy(header)
        h[a]["data_offsets"], h[b]["data_offsets"] = h[b]["data_offsets"], h[a]["data_offsets"]
        file_of(h, "header rewrite: content", f"data of {a} and {b} swapped", expect=r"checksum mismatch")
    u8 = [k for k in names if header[k]["dtype"] == "U8"]
    if u8:
        h = copy.deepcopy(header)
        h[u8[0]]["dtype"] = "I8"
        file_of(h, "header rewrite: content", f"{u8[0]} U8->I8", expect=r"checksum mismatch")
    return out


def _write(path, tensors, meta_values, checksum=True):
    keys = list(meta_values)
    torch.ops.lowbit.save_safetensors(str(path), list(tensors), list(tensors.values()), keys,
                                      [meta_values[k] for k in keys], checksum)


def _layer_key(name, key):
    return f"{name}.{key}" if name else key


def structured_mutations(s, rng):
    """Changes of the "lowbit" metadata JSON and of the stored tensors, written with a
    valid checksum."""
    out = []
    layers = list(s.info["layers"])
    picked = sorted({layers[0], layers[len(layers) // 2], layers[-1]}, key=layers.index)

    def meta_mut(kind, what, fn, must_reject=True, expect=None):
        def build(path):
            info = copy.deepcopy(s.info)
            fn(info)
            _write(path, s.tensors, dict(s.meta, lowbit=json.dumps(info, indent=1, sort_keys=True)))
        out.append(Mutation(kind, what, build=build, must_reject=must_reject, expect=expect))

    def text_mut(kind, what, text, must_reject=True, expect=r"metadata: |layers\['"):
        out.append(Mutation(kind, what, build=lambda path: _write(path, s.tensors, dict(s.meta, lowbit=text)),
                            must_reject=must_reject, expect=expect))

    def tensor_mut(kind, what, fn, must_reject=True, expect=None):
        def build(path):
            tensors = {k: v.clone() for k, v in s.tensors.items()}
            fn(tensors)
            _write(path, tensors, s.meta)
        out.append(Mutation(kind, what, build=build, must_reject=must_reject, expect=expect))

    def setter(layer, *path_and_value, delete=False):
        *path, value = path_and_value if not delete else (*path_and_value, None)

        def fn(info):
            d = info["layers"][layer]
            for p in path[:-1]:
                d = d[p]
            if delete:
                del d[path[-1]]
            else:
                d[path[-1]] = value
        return fn

    # -- the whole document --
    for v in ["lowbit-2", "", 1, None]:
        meta_mut("meta: format", f"format={v!r}", lambda i, v=v: i.__setitem__("format", v), expect=r"format")
    for key in ["format", "layers"]:
        meta_mut("meta: delete key", key, lambda i, k=key: i.pop(k), expect=key)
    meta_mut("meta: delete key", "skipped", lambda i: i.pop("skipped"), must_reject=False)
    meta_mut("meta: extra key", "top-level 'extra'", lambda i: i.__setitem__("extra", 1), expect=r"unknown key")
    for v in [{}, [], None, "x"]:
        meta_mut("meta: layers", f"layers={v!r}", lambda i, v=v: i.__setitem__("layers", v), expect=r"layers")
    for v in [[], {"x": 1}, "output"]:
        meta_mut("meta: skipped", f"skipped={v!r}", lambda i, v=v: i.__setitem__("skipped", v), expect=r"skipped")
    meta_mut("meta: skipped", "skipped={'x': 'reason'}", lambda i: i.__setitem__("skipped", {"x": "reason"}),
             must_reject=False)
    text = s.meta["lowbit"]
    for what, t in [("empty", ""), ("null", "null"), ("[]", "[]"), ("'{'", "{"), ("two documents", text + " {}"),
                    ("BOM", "\ufeff" + text), ("NUL inside", text[:10] + "\x00" + text[10:]),
                    ("non-ASCII value", text.replace('"lowbit-1"', "\u00e9", 1)),
                    ("non-ASCII layer name", text.replace('"layers": {\n', '"layers": {\n  "\u00e9": {},\n', 1)),
                    ("truncated", text[: len(text) // 2]),
                    ("duplicate key", '{"format": "lowbit-1", ' + text.lstrip()[1:]),
                    ("batch_num NaN", re.sub(r'"batch_num": \d+', '"batch_num": NaN', text, count=1)),
                    ("batch_num 1e999", re.sub(r'"batch_num": \d+', '"batch_num": 1e999', text, count=1)),
                    ("batch_num 2**64", re.sub(r'"batch_num": \d+', f'"batch_num": {2 ** 64}', text, count=1)),
                    ("batch_num 1.0", re.sub(r'"batch_num": \d+', '"batch_num": 1.0', text, count=1)),
                    ("deep nesting", text.replace('"params": {', '"params": {"a": ' + "[" * 200 + "]" * 200 + ", ",
                                                  1)),
                    ("single quotes", text.replace('"format"', "'format'")),
                    ("trailing comma", text.replace('"lowbit-1"', '"lowbit-1",', 1))]:
        text_mut("meta: raw JSON text", what, t)
    # the metadata keys of the file
    out.append(Mutation("file metadata keys", "no 'lowbit' key",
                        build=lambda p: _write(p, s.tensors, {"other": s.meta["lowbit"]}),
                        expect=r"no lowbit metadata"))
    out.append(Mutation("file metadata keys", "extra key", must_reject=False,
                        build=lambda p: _write(p, s.tensors, dict(s.meta, other="x"))))
    out.append(Mutation("file metadata keys", "no checksum", must_reject=False,
                        build=lambda p: _write(p, s.tensors, {"lowbit": s.meta["lowbit"]}, checksum=False)))

    # -- one layer's entry --
    for L in picked:
        li = s.info["layers"][L]
        cfg = li["config"]
        f = re.escape(L)  # the message names the layer: layers['L'].field, tensor 'L.key' or layer 'L'
        for fmt in [*lowbit.FORMATS, "bogus", "", 8, None]:
            if fmt != cfg["weights"]["type"]:
                meta_mut("meta: weights.type", f"{L}: {cfg['weights']['type']}->{fmt}",
                         setter(L, "config", "weights", "type", fmt), expect=f)
        if cfg["inputs"] is not None:
            for fmt in [*lowbit.FORMATS, "bogus", None]:
                if fmt != cfg["inputs"]["type"]:
                    meta_mut("meta: inputs.type", f"{L}: {cfg['inputs']['type']}->{fmt}",
                             setter(L, "config", "inputs", "type", fmt), expect=f)
            meta_mut("meta: inputs", f"{L}: inputs=null", setter(L, "config", "inputs", None), expect=f)
            for st in ["token", "channel", "group", "bogus"]:
                meta_mut("meta: inputs.strategy", f"{L}: {st}", setter(L, "config", "inputs", "strategy", st),
                         expect=f)
            # asymmetric int8 with the stored offset 0 is a valid layer: if it loads, it computes the same
            meta_mut("meta: inputs.symmetric", f"{L}: flipped",
                     setter(L, "config", "inputs", "symmetric", not cfg["inputs"]["symmetric"]),
                     must_reject=False, expect=f)
        else:
            meta_mut("meta: inputs", f"{L}: int8 per tensor added",
                     setter(L, "config", "inputs", {"group_size": 0, "strategy": "tensor", "symmetric": True,
                                                    "type": "int8"}), expect=f)
            meta_mut("meta: inputs", f"{L}: int8 per token added",
                     setter(L, "config", "inputs", {"group_size": 0, "strategy": "token", "symmetric": True,
                                                    "type": "int8"}), expect=f)
        for st in ["tensor", "channel", "group", "token", "bogus", None]:
            if st != cfg["weights"]["strategy"]:
                meta_mut("meta: weights.strategy", f"{L}: {cfg['weights']['strategy']}->{st}",
                         setter(L, "config", "weights", "strategy", st), expect=f)
        for gs in ["32", 32, -1, 7, 2 ** 40, 1.5, None, True]:
            meta_mut("meta: weights.group_size", f"{L}: {gs!r}", setter(L, "config", "weights", "group_size", gs),
                     expect=f)
        for sym in [not cfg["weights"]["symmetric"], "true", 1, None]:
            meta_mut("meta: weights.symmetric", f"{L}: {sym!r}", setter(L, "config", "weights", "symmetric", sym),
                     expect=f)
        for bn in [-1, 0, "1", 1.5, None, True, []]:
            meta_mut("meta: batch_num", f"{L}: {bn!r}", setter(L, "config", "batch_num", bn), expect=f)
        for bn in [7, 2 ** 62]:  # valid counts: calibration is over, they change nothing
            meta_mut("meta: batch_num", f"{L}: {bn} (a valid count)", setter(L, "config", "batch_num", bn),
                     must_reject=False)
        for alg in [*(a for a in ("minmax", "gptq", "smoothquant", "ofmr", "awq", "cast", "quantile", "mxquant")
                      if a != cfg["algorithm"]), "bogus", "", 3, None]:
            meta_mut("meta: algorithm", f"{L}: {cfg['algorithm']}->{alg!r}",
                     setter(L, "config", "algorithm", alg), must_reject=False, expect=f)
        for p in [[], {"bogus": 1}, "x", {"smooth_strength": 2.0}, {"smooth_strength": "0.5"},
                  {"grids_num": -3}]:
            meta_mut("meta: params", f"{L}: {p!r}", setter(L, "config", "params", p), expect=f)
        for key in ["algorithm", "batch_num", "inputs", "params", "weights"]:
            meta_mut("meta: delete config key", f"{L}: {key}", setter(L, "config", key, delete=True),
                     must_reject=key != "params", expect=f)
        meta_mut("meta: extra key", f"{L}: config.extra", setter(L, "config", "extra", 1), expect=f)
        meta_mut("meta: extra key", f"{L}: weights.extra", setter(L, "config", "weights", "extra", 1), expect=f)
        meta_mut("meta: extra key", f"{L}: layer.extra", setter(L, "extra", 1), expect=f)
        for mod in ["DeployConv2d" if li["module"] == "DeployLinear" else "DeployLinear", "Linear", "CalibLinear",
                    "", 3, None]:
            meta_mut("meta: module", f"{L}: {mod!r}", setter(L, "module", mod), expect=f)
        shape = li["weight_shape"]
        n, k = shape[0], math.prod(shape[1:])
        for sh in [shape[::-1], [n], [n, k, 1, 1] if len(shape) == 2 else [n, k], [0, *shape[1:]],
                   [-1, *shape[1:]], [n + 1, *shape[1:]], [n, *shape[1:-1], shape[-1] + 1], [str(n), *shape[1:]],
                   [2 ** 31 + 1, *shape[1:]], [2 ** 31] * len(shape), [n * 2, k // 2] if len(shape) == 2 else
                   [n * 2, shape[1] // 2, *shape[2:]], [], None, "x".join(map(str, shape)), [float(n), *shape[1:]]]:
            meta_mut("meta: weight_shape", f"{L}: {sh!r}", setter(L, "weight_shape", sh), expect=f)
        for wd in ["torch.bfloat16", "torch.float16", "torch.float64", "float32", "torch.int8", None, 32]:
            # (a float16/bfloat16 claim for a float32 model: refused, or the check on loaded models below)
            meta_mut("meta: weight_dtype", f"{L}: {wd!r}", setter(L, "weight_dtype", wd),
                     must_reject=wd not in ("torch.bfloat16", "torch.float16"), expect=f)
        if "folded_batchnorm" in li:
            meta_mut("meta: folded_batchnorm", f"{L}: deleted", setter(L, "folded_batchnorm", delete=True), expect=f)
            others = [i.get("folded_batchnorm") for n_, i in s.info["layers"].items() if n_ != L]
            for bn in ["", "nope", L, 3, None, *[o for o in others if o][:2]]:
                # (a BatchNorm of the same size named instead: its own tensors are missing from the file)
                meta_mut("meta: folded_batchnorm", f"{L}: {bn!r}", setter(L, "folded_batchnorm", bn),
                         expect=f + r"|missing \[")
        else:
            meta_mut("meta: folded_batchnorm", f"{L}: added", setter(L, "folded_batchnorm", "norm"), expect=f)
        for key in ["config", "module", "weight_shape", "weight_dtype"]:
            meta_mut("meta: delete layer key", f"{L}: {key}", setter(L, key, delete=True), expect=f)
        for new in ["nope", "", L + ".", L.rpartition(".")[0] or "x", L + ".weight"]:
            meta_mut("meta: layer name", f"{L} -> {new!r}",
                     lambda i, L=L, new=new: i["layers"].__setitem__(new, i["layers"].pop(L)),
                     expect=re.escape(f"'{new}") if new else r"'weight_packed'")
        meta_mut("meta: delete layer", L, lambda i, L=L: i["layers"].pop(L), expect=re.escape(L))

        # -- this layer's tensors --
        def tset(key, index, value, L=L):
            def fn(t):
                t[_layer_key(L, key)].view(-1)[index] = value
            return fn
        for v in [float("nan"), float("inf"), float("-inf"), 0.0, -1.0, -0.0]:
            tensor_mut("tensor: w_scale value", f"{L}: {v}", tset("w_scale", 0, v), expect=re.escape(f"{L}.w_scale"))
        for key in ["weight_packed", "w_scale", "w_offset", "recon_error", "act_scale", "act_offset", "smooth",
                    "w_scale1", "bias"]:
            full = _layer_key(L, key)
            if full not in s.tensors:
                continue
            tensor_mut("tensor: removed", full, lambda t, full=full: t.pop(full), expect=re.escape(full))
            t0 = s.tensors[full]
            dtypes = [torch.float64, torch.int64, torch.float16, torch.int8, torch.uint8, torch.int32, torch.float32]
            for dt in rng.sample([d for d in dtypes if d != t0.dtype], 3):
                tensor_mut("tensor: dtype", f"{full}: {t0.dtype}->{dt}",
                           lambda t, full=full, dt=dt: t.__setitem__(full, t[full].to(dt)), expect=re.escape(full))
            shapes = [(t0.numel() + 1,), (1, *t0.shape)]
            if t0.dim() >= 1 and t0.numel():
                shapes.append((t0.numel() - 1,))
            if t0.dim() == 2 and t0.shape[0] != t0.shape[1]:
                shapes.append(tuple(t0.shape[::-1]))
            for sh in shapes:
                tensor_mut("tensor: shape", f"{full}: {tuple(t0.shape)}->{sh}",
                           lambda t, full=full, sh=sh: t.__setitem__(
                               full, torch.zeros(sh, dtype=t[full].dtype) if math.prod(sh) != t[full].numel()
                               else t[full].reshape(sh)),
                           expect=re.escape(full))
            if t0.is_floating_point() and key not in ("recon_error",):
                for v in [float("nan"), float("inf")] + ([0.0, -1.0] if key in ("act_scale", "smooth") else []):
                    tensor_mut(f"tensor: {key} value", f"{full}: {v}", tset(key, t0.numel() - 1, v),
                               expect=re.escape(full))
        if _layer_key(L, "act_offset") in s.tensors:
            for v in [2 ** 31 - 1, -2 ** 31, 1, -1, 200]:
                tensor_mut("tensor: act_offset value", f"{L}: {v}", tset("act_offset", 0, v),
                           expect=re.escape(f"{L}.act_offset"))
        wf = cfg["weights"]["type"]
        codes = {"hifloat8": [0x80], "float8_e4m3fn": [0x7F, 0xFF]}.get(wf, [])
        for c in codes:
            tensor_mut("tensor: NaN weight code", f"{L}: {c:#x}", tset("weight_packed", 5, c),
                       expect=re.escape(f"{L}.weight_packed"))
        if not cfg["weights"]["symmetric"] and s.tensors[_layer_key(L, "w_offset")].numel():
            for v in [2 ** 31 - 1, -2 ** 31, 1000]:
                tensor_mut("tensor: w_offset value", f"{L}: {v}", tset("w_offset", 0, v),
                           expect=re.escape(f"{L}.w_offset"))
        elif not s.tensors[_layer_key(L, "w_offset")].numel():
            tensor_mut("tensor: w_offset value", f"{L}: symmetric layer given offsets",
                       lambda t, L=L: t.__setitem__(_layer_key(L, "w_offset"),
                                                    torch.zeros(s.tensors[_layer_key(L, "w_scale")].numel(),
                                                                dtype=torch.int32)),
                       expect=re.escape(f"{L}.w_offset"))
        tensor_mut("tensor: extra", f"{L}.extra", lambda t, L=L: t.__setitem__(_layer_key(L, "extra"),
                                                                              torch.zeros(3)), expect=r"extra")
        tensor_mut("tensor: recon_error value", f"{L}: NaN (diagnostic only)", tset("recon_error", 0, float("nan")),
                   must_reject=False)
    # tensors outside the quantized layers: removed, another dtype or shape, an extra one
    plain = [k for k in s.tensors if not any(k.startswith(L + ".") for L in layers)]
    for full in rng.sample(plain, min(3, len(plain))):
        t0 = s.tensors[full]
        tensor_mut("tensor: non-layer", f"{full} removed", lambda t, full=full: t.pop(full), expect=re.escape(full))
        other = torch.float16 if t0.is_floating_point() else torch.float32
        tensor_mut("tensor: non-layer", f"{full} {t0.dtype}->{other}",
                   lambda t, full=full, other=other: t.__setitem__(full, t[full].to(other)), expect=re.escape(full))
        tensor_mut("tensor: non-layer", f"{full} shape +1",
                   lambda t, full=full: t.__setitem__(full, torch.zeros(t[full].numel() + 1, dtype=t[full].dtype)),
                   expect=re.escape(full))
    tensor_mut("tensor: non-layer", "nope.weight added", lambda t: t.__setitem__("nope.weight", torch.zeros(2)),
               expect=r"nope\.weight")
    return out


# ---- running one mutation ----

def classify(e, path):
    msg = str(e)
    if isinstance(e, lowbit.FormatError):
        if msg.startswith(f"load: {path}: safetensors: checksum mismatch"):
            return "rejected: checksum"
        if msg.startswith(f"load: {path}: safetensors: "):
            return "rejected: reader"
        return "rejected: validator"
    return "rejected: model check"


def run_one(s, folder, m):
    """Returns (outcome, problem or None, message)."""
    path = folder / TENSORS
    if m.data is not None:
        path.write_bytes(m.data)
    else:
        m.build(path)
    model = s.float_model
    try:
        lowbit.load(model, folder)
    except ValueError as e:
        msg = str(e)
        if any(isinstance(x, (DeployLayer, CalibLayer)) for x in model.modules()):
            s.float_model = copy.deepcopy(s.template)
            return "NOT ALLOWED", f"the refused load changed the float model: {type(e).__name__}: {msg}", msg
        if isinstance(e, lowbit.FormatError) and str(path) not in msg:
            return "NOT ALLOWED", f"FormatError without the file path: {msg}", msg
        if not isinstance(e, lowbit.FormatError) and str(path) not in msg and not re.search(
                r"layer '|tensor '|missing \[|unexpected \[", msg):
            return "NOT ALLOWED", f"ValueError names neither the file nor a layer/tensor: {msg}", msg
        if m.expect and not re.search(m.expect, msg):
            return "NOT ALLOWED", f"message does not match {m.expect!r}: {type(e).__name__}: {msg}", msg
        return classify(e, path), None, msg
    except Exception as e:  # noqa: BLE001  (the point of the test)
        s.float_model = copy.deepcopy(s.template)
        return "NOT ALLOWED", f"{type(e).__name__}: {e}\n{traceback.format_exc()}", str(e)
    s.float_model = copy.deepcopy(s.template)  # the loaded model is changed: a fresh one for the next load
    return check_loaded(s, m, model)


def check_loaded(s, m, model):
    """A load that succeeded: the saved model, computing as it did."""
    try:
        with torch.no_grad():
            out = model(s.x)
    except Exception as e:  # noqa: BLE001
        return "NOT ALLOWED", f"loaded, but the forward pass raised {type(e).__name__}: {e}", ""
    output = "the same output" if same(out, s.out) else "ANOTHER output"
    # its layers compute in the float model's dtype (the file cannot change the model's dtype)
    for name, layer in model.named_modules():
        if isinstance(layer, DeployLayer):
            want = s.template.get_submodule(name).weight.dtype
            if layer.weight_dtype != want:
                return "NOT ALLOWED", (f"loaded with {output}, but layer '{name}' now computes in "
                                       f"{layer.weight_dtype} while the float model's layer is {want}"), ""
    # its tensors are the saved ones (recon_error, a diagnostic, aside)
    state = model.state_dict()
    for k, v in s.tensors.items():
        if not k.endswith("recon_error") and not same(state[k], v):
            return "NOT ALLOWED", f"loaded with {output}, but tensor '{k}' differs from the saved one", ""
    if output != "the same output":
        return "NOT ALLOWED", "loaded silently with another output", ""
    if m.must_reject:
        return "NOT ALLOWED", "loaded (same output), but the file breaks lowbit's format", ""
    return "loaded, equal output", None, ""


COLUMNS = ["rejected: checksum", "rejected: reader", "rejected: validator", "rejected: model check",
           "loaded, equal output", "NOT ALLOWED"]


def render(table):
    short = ["checksum", "reader", "validator", "model chk", "loaded =", "NOT OK"]
    w = max(len(k) for k in table) + 2
    lines = [f"{'mutation':<{w}}{'n':>6}" + "".join(f"{c:>11}" for c in short)]
    total = Counter()
    for kind in sorted(table):
        row = table[kind]
        total.update(row)
        lines.append(f"{kind:<{w}}{sum(row.values()):>6}" + "".join(f"{row[c]:>11}" for c in COLUMNS))
    lines.append(f"{'TOTAL':<{w}}{sum(total.values()):>6}" + "".join(f"{total[c]:>11}" for c in COLUMNS))
    return "\n".join(lines)


def test_load_survives_mutated_files(saved_models, workdir):
    t0 = time.monotonic()
    rng = random.Random(SEED)
    table = defaultdict(Counter)
    per_model = {}
    problems = []
    for s in saved_models:
        folder = workdir / ("mut-" + s.name.replace("/", "-"))
        folder.mkdir()
        muts = byte_mutations(s, rng) + structured_mutations(s, rng)
        counts = Counter()
        for m in muts:
            outcome, problem, _ = run_one(s, folder, m)
            table[m.kind][outcome] += 1
            counts[outcome] += 1
            if problem:
                problems.append(f"[{s.name}] {m.kind}: {m.what}: {problem}")
        per_model[s.name] = counts
    elapsed = time.monotonic() - t0
    print(f"\nlowbit.load mutation test: {sum(sum(c.values()) for c in per_model.values())} mutated files, "
          f"{elapsed:.1f} s")
    print(render(table))
    for name, c in per_model.items():
        print(f"  {name}: {sum(c.values())} files: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    if problems:
        print(f"\n{len(problems)} outcomes that are not allowed:")
        for p in problems:
            print("  " + p.replace("\n", "\n    "))

    total = sum(sum(c.values()) for c in per_model.values())
    failed = []  # (every check runs: one failure does not hide the others)

    def check(ok, what):
        if not ok:
            failed.append(what)

    check(total >= 2000, f"only {total} mutated files")
    # every flip in the data section is caught by the checksum
    row = table["flip anywhere -> data"]
    check(row["rejected: checksum"] == sum(row.values()) > 0, f"flips in the data section: {dict(row)}")
    # every length change, appended byte and broken header structure by the reader
    for kind in ["flip header length", "truncate", "append bytes", "header length +-1..8", "header rewrite: structure"]:
        row = table[kind]
        check(row["rejected: reader"] == sum(row.values()) > 0, f"{kind}: {dict(row)}")
    row = table["header rewrite: content"]
    check(row["rejected: checksum"] == sum(row.values()) > 0, f"header rewrite: content: {dict(row)}")
    row = table["header rewrite: same content"]
    check(row["loaded, equal output"] == 2 * len(saved_models), f"header rewrite: same content: {dict(row)}")
    # a flip in the JSON header is nearly always refused (a loaded one must have been harmless:
    # whitespace, or the checksum key's own name)
    for kind in ["flip JSON header", "bit flip JSON header"]:
        rejected = sum(v for k, v in table[kind].items() if k.startswith("rejected"))
        check(rejected >= 0.8 * sum(table[kind].values()), f"{kind}: {dict(table[kind])}")
    # the structured changes reach the validator: it, not the checksum or the reader, refuses them
    structured = Counter()
    for kind, row in table.items():
        if kind.startswith(("meta:", "tensor:")):
            structured.update(row)
    check(structured["rejected: checksum"] == 0 and structured["rejected: validator"] > 500,
          f"structured mutations: {dict(structured)}")
    if problems:
        failed.append(f"{len(problems)} outcomes not allowed (listed above with -s); first: {problems[0]}")
    assert not failed, "\n".join(failed)

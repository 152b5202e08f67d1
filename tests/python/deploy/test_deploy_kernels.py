"""The deploy products (torch.ops.lowbit.linear_packed / linear_int8) against the
fake-quant reference: every format, every activation dtype, every instruction set, odd
shapes (M = 1, 3, 64; K = 33, 172, 4096; N = 1, 7, and 4096 for the big case)."""
import itertools
import types

import pytest
import torch
import torch.nn.functional as F

import lowbit
from conftest import assert_close_to_reference
from format_cases import names_where, weight_cases
from lowbit import formats
from lowbit.modules.deploy import DeployLinear

OPS = torch.ops.lowbit


ISAS = formats.available_isas()  # every instruction set this CPU runs
WEIGHTS = weight_cases()  # every weight row of the format table (format, granularity, group_size, symmetric)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
EMPTY = torch.empty(0, dtype=torch.int32)


@pytest.fixture(autouse=True)
def restore_isa():
    yield
    OPS.set_isa("auto")


def packed_weight(n, k, fmt, gran, gs, sym, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g) * 3
    scale, offset = formats.compute_scales(w, fmt, gran, gs, sym)
    return formats.pack(w, fmt, scale, offset, gran, gs, sym), scale, offset


def reference(x, packed, scale, offset, fmt, gran, gs, sym, k, dtype, bias, scale1=None):
    w = formats.unpack(packed, fmt, scale, k, offset, gran, gs, sym, torch.float32 if scale1 is not None else dtype)
    if scale1 is not None:
        w = (w * scale1).to(dtype)
    if dtype == torch.float16:  # what the deploy layers compare with: fp32 compute, fp16 result
        return F.linear(x.float(), w.float(), None if bias is None else bias.float()).to(dtype)
    return F.linear(x, w, bias)


def magnitude(x, packed, scale, offset, fmt, gran, gs, sym, k, bias):
    w = formats.unpack(packed, fmt, scale, k, offset, gran, gs, sym, torch.float32)
    return F.linear(x.float().abs(), w.abs(), None if bias is None else bias.float().abs())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt,gran,gs,sym", WEIGHTS, ids=lambda v: str(v))
def test_linear_packed_equals_fake_quant_reference(isa, fmt, gran, gs, sym):
    OPS.set_isa(isa)
    shapes = list(itertools.product([1, 3, 64], [33, 172, 4096], [1, 7]))
    checked = 0
    for (m, k, n), dtype in itertools.product(shapes, DTYPES):
        if gran == "group" and not fmt.startswith("mx") and gs > k:
            continue
        packed, scale, offset = packed_weight(n, k, fmt, gran, gs, sym, seed=m * 7 + k + n)
        x = torch.randn(m, k).to(dtype)
        bias = torch.randn(n).to(dtype) if (m + n) % 2 else None
        got = OPS.linear_packed(x, packed, scale, offset if offset.numel() else EMPTY, None, bias, fmt, gran, gs, sym,
                                k, dtype)
        want = reference(x, packed, scale, offset, fmt, gran, gs, sym, k, dtype, bias)
        mag = magnitude(x, packed, scale, offset, fmt, gran, gs, sym, k, bias)
        assert_close_to_reference(got, want, k, what=f"{isa} {fmt} {m}x{k}x{n} {dtype}", magnitude=mag)
        checked += 1
    assert checked >= 27


@pytest.mark.parametrize("fmt,gran,gs", [("int4", "group", 128), ("float8_e4m3fn", "channel", 0),
                                         ("mxfp4_e2m1", "group", 32), ("hifloat8", "channel", 0)])
def test_linear_packed_big_shape(fmt, gran, gs):
    """N = K = 4096 through the GEMV (M = 1) and blocked GEMM (M = 64) paths."""
    packed, scale, offset = packed_weight(4096, 4096, fmt, gran, gs, True)
    for m, dtype in [(1, torch.float32), (64, torch.float32), (3, torch.bfloat16)]:
        x = torch.randn(m, 4096).to(dtype)
        got = OPS.linear_packed(x, packed, scale, EMPTY, None, None, fmt, gran, gs, True, 4096, dtype)
        assert_close_to_reference(got, reference(x, packed, scale, offset, fmt, gran, gs, True, 4096, dtype, None),
                                  4096, what=f"{fmt} M={m}")



@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,k", [(172, 64), (200, 64), (172, 512), (1000, 96)])
def test_gemv_row_blocks(isa, n, k):
    """The fused GEMV takes weight rows in blocks of up to 64 (serial), or of 16-64 with
    at least 4 per thread (parallel: 172 x 512 and 1000 x 96): ragged last blocks and every
    activation-row count up to 8 equal the reference."""
    OPS.set_isa(isa)
    for fmt, gran, gs in [("int8", "channel", 0), ("int4", "group", 32), ("hifloat8", "tensor", 0)]:
        packed, scale, offset = packed_weight(n, k, fmt, gran, gs, True, seed=n + k)
        for m in (1, 3, 8):
            x, bias = torch.randn(m, k), torch.randn(n)
            got = OPS.linear_packed(x, packed, scale, EMPTY, None, bias, fmt, gran, gs, True, k, torch.float32)
            want = reference(x, packed, scale, offset, fmt, gran, gs, True, k, torch.float32, bias)
            assert_close_to_reference(got, want, k, what=f"{isa} {fmt} {n}x{k} M={m}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt,gran", [("int8", "channel"), ("int8", "tensor"), ("int4", "channel"),
                                      ("float8_e4m3fn", "channel"), ("hifloat8", "channel")])
def test_gemv_huge_and_nan_activations(isa, fmt, gran):
    """One-scale-per-row GEMVs multiply each row's dot product by its scale once; with
    activations near the fp32 limit that order would overflow (127 x 1e38 > 3.4e38) where
    the reference's scaled weights (about 1e-2) do not, so such calls scale every weight
    first. A NaN row stays NaN, the other rows finite."""
    OPS.set_isa(isa)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(7, 256, generator=g) * 1e-2
    scale, offset = formats.compute_scales(w, fmt, gran, 0, True)
    packed = formats.pack(w, fmt, scale, offset, gran, 0, True)
    x = torch.randn(3, 256, generator=g)
    x[0] = x[0].sign() * 1e38  # products of the largest unscaled codes overflow
    x[1, 17] = float("nan")
    got = OPS.linear_packed(x, packed, scale, EMPTY, None, None, fmt, gran, 0, True, 256, torch.float32)
    want = reference(x, packed, scale, offset, fmt, gran, 0, True, 256, torch.float32, None)
    assert torch.isfinite(want[0]).all() and want[0].abs().max() > 1e28
    assert torch.isnan(got[1]).all()
    keep = torch.tensor([0, 2])
    mag = magnitude(x[keep], packed, scale, offset, fmt, gran, 0, True, 256, None)
    assert_close_to_reference(got[keep], want[keep], 256, what=f"{isa} {fmt} {gran}", magnitude=mag)
    # the same activations without the NaN and huge rows take the deferred-scale GEMV
    small = OPS.linear_packed(x[2:], packed, scale, EMPTY, None, None, fmt, gran, 0, True, 256, torch.float32)
    assert_close_to_reference(small, want[2:], 256, what=f"{isa} {fmt} {gran} deferred")

def check_integer_gemv(isa, fmt, gran, gs, shapes):
    """Every activation-row count up to 17 (9-16: GEMVs in passes of 8) against the
    reference, with plain activations and with activations of 2^64 or more (every code
    scaled first), for weights of the given (rows, cols) shapes."""
    OPS.set_isa(isa)
    for n, k in shapes:
        if gran == "group" and gs > k:
            continue
        packed, scale, offset = packed_weight(n, k, fmt, gran, gs, True, seed=n * k + gs)
        for m in (1, 2, 3, 4, 5, 8, 9, 13, 16, 17):
            x = torch.randn(m, k, generator=torch.Generator().manual_seed(m + k))
            for big in (False, True):
                xs = x * 2.0 ** 70 if big else x
                got = OPS.linear_packed(xs, packed, scale, EMPTY, None, None, fmt, gran, gs, True, k, torch.float32)
                want = reference(xs, packed, scale, offset, fmt, gran, gs, True, k, torch.float32, None)
                mag = magnitude(xs, packed, scale, offset, fmt, gran, gs, True, k, None)
                assert_close_to_reference(got, want, k, what=f"{isa} {fmt} {gran} {gs} {n}x{k} M={m} big={big}",
                                          magnitude=mag)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt,gran,gs", [("int4", "group", 32), ("int4", "group", 64), ("int4", "group", 128),
                                         ("int4", "group", 192), ("int4", "group", 96), ("int4", "channel", 0),
                                         ("int4", "tensor", 0), ("int3", "group", 32), ("int3", "channel", 0)])
def test_gemv_nibble_lanes(isa, fmt, gran, gs):
    """Symmetric 4-bit integer GEMVs read blocks of 128 columns as 32-bit lanes (AVX2:
    granules of 32 or a multiple of 64 columns, or one per row): widths with and without
    whole blocks, a ragged end after them, spans of the GEMV's column loop that start past
    the first block (K = 6400 at one row, 4096 at four and eight), odd weight-row counts."""
    check_integer_gemv(isa, fmt, gran, gs, [(5, 128), (7, 172), (3, 300), (9, 6400), (4, 4096)])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("gran,gs", [("group", 32), ("group", 64), ("group", 96), ("group", 128), ("channel", 0),
                                     ("tensor", 0)])
def test_gemv_int8_chunks(isa, gran, gs):
    """Symmetric int8 GEMVs (AVX2: chunks of 32 columns, each in one granule, one scale
    multiply-add per chunk): ragged row ends, spans past the first (K = 6400 at one row),
    odd weight-row counts."""
    check_integer_gemv(isa, "int8", gran, gs, [(5, 33), (7, 100), (3, 300), (9, 6400), (4, 4096)])


def test_two_level_fp8_fp4_row_scale_and_leading_dims():
    packed, scale, offset = packed_weight(7, 172, "float4_e2m1", "group", 32, True)
    s1 = torch.rand(7, 1) + 0.5
    x = torch.randn(2, 5, 172)
    got = OPS.linear_packed(x, packed, scale, EMPTY, s1, None, "float4_e2m1", "group", 32, True, 172, torch.float32)
    want = reference(x, packed, scale, offset, "float4_e2m1", "group", 32, True, 172, torch.float32, None, s1)
    assert got.shape == (2, 5, 7)
    assert_close_to_reference(got, want, 172)


def int8_case(m, k, n, bits, per_token, asym, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    x = (torch.randn(m, k, generator=g) * 3 + (1.0 if asym else 0.0)).to(dtype)
    fmt = "int8" if bits == 8 else "int4"
    ws, wo = formats.compute_scales(w, fmt, "channel", 0, True)
    packed = formats.pack(w, fmt, ws, wo, "channel", 0, True)
    wd = formats.unpack(packed, fmt, ws, k, wo, "channel", 0, True, torch.float32)
    # the integer kernel's reference keeps the activation QDQ in fp32 (exact int32 sums)
    if per_token:
        xq = formats.fake_quant(x.float(), "int8", "token", 0, True)
        a_s, a_o = torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.int32)
    else:
        a_s, a_o = formats.compute_scales(x.float(), "int8", "tensor", 0, not asym)
        xq = formats.fake_quant(x.float(), "int8", "tensor", 0, not asym, scale=a_s, offset=a_o)
    bias = torch.randn(n, generator=g)
    want = F.linear(xq.float(), wd, bias).to(dtype)
    return x, packed, ws, a_s, a_o, bias, want


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("per_token,asym", [(False, False), (False, True), (True, False)])
def test_linear_int8_equals_fake_quant_reference(isa, bits, per_token, asym):
    OPS.set_isa(isa)
    for (m, k, n), dtype in itertools.product(itertools.product([1, 3, 64], [33, 172, 4096], [1, 7]),
                                              [torch.float32, torch.bfloat16]):
        x, packed, ws, a_s, a_o, bias, want = int8_case(m, k, n, bits, per_token, asym, dtype, m + k + n)
        got = OPS.linear_int8(x, packed, ws, bits, k, per_token, a_s, a_o, bias)
        assert_close_to_reference(got, want, k, what=f"{isa} int8 x int{bits} {m}x{k}x{n} {dtype}")
        if n == 7 and m in (3, 64):  # SmoothQuant's x / s inside the op equals dividing first
            # (64 x 4096 activations take ATen's division, smaller ones the op's buffer)
            smooth = torch.rand(k) + 0.5
            got = OPS.linear_int8(x, packed, ws, bits, k, per_token, a_s, a_o, bias, smooth)
            assert torch.equal(got, OPS.linear_int8(x / smooth.to(dtype), packed, ws, bits, k, per_token, a_s, a_o,
                                                    bias))


def test_linear_int8_nan_rows_and_saturation():
    x, packed, ws, a_s, a_o, bias, _ = int8_case(3, 64, 7, 8, False, False, torch.float32, 1)
    x[1, 5] = float("nan")
    x[2, 0] = float("inf")
    y = OPS.linear_int8(x, packed, ws, 8, 64, False, a_s, a_o, bias)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[0]).all() and torch.isfinite(y[2]).all()
    # the fake-quant reference saturates Inf to the largest code too
    wd = formats.unpack(packed, "int8", ws, 64, None, "channel", 0, True)
    xq = formats.fake_quant(x, "int8", "tensor", 0, True, scale=a_s, offset=a_o)
    assert_close_to_reference(y[2:], F.linear(xq[2:], wd, bias), 64)



def test_activation_scalars_in_any_dtype_and_layout():
    """The static activation scale and offset are read in place when they are float32 /
    int32 and converted otherwise: every spelling of the same values gives the same output,
    a different value a different one, and an empty tensor is a clear error."""
    x, packed, ws, a_s, a_o, bias, want = int8_case(3, 64, 7, 8, False, True, torch.float32, 5)
    assert int(a_o) != 0
    base = OPS.linear_int8(x, packed, ws, 8, 64, False, a_s, a_o, bias)
    assert_close_to_reference(base, want, 64)
    grid = torch.stack([a_s.reshape(()), torch.tensor(9.0)]).repeat(3)[1::2]  # a strided view: [9, 9, 9]
    spellings = [(a_s.double(), a_o.long()), (a_s.reshape(1, 1, 1), a_o.reshape(1, 1)),
                 (torch.stack([a_s.reshape(()), torch.tensor(7.0)])[:1], a_o.float()),
                 (torch.cat([a_s.reshape(1), torch.tensor([5.0])]), torch.cat([a_o.reshape(1), a_o.reshape(1) + 3])),
                 (torch.cat([a_s.reshape(1), torch.tensor([5.0])]).double(), torch.cat([a_o.reshape(1), a_o.reshape(1) + 3]).long())]
    for s, o in spellings:
        assert torch.equal(OPS.linear_int8(x, packed, ws, 8, 64, False, s, o, bias), base)
    assert not torch.equal(OPS.linear_int8(x, packed, ws, 8, 64, False, grid, a_o, bias), base)
    with pytest.raises(ValueError, match="act_scale: expected a value, got an empty tensor"):
        OPS.linear_int8(x, packed, ws, 8, 64, False, torch.ones(0), a_o, bias)
    # the same reader serves linear_packed's static activation quantization
    args = (packed, ws, EMPTY, None, bias, "int8", "channel", 0, True, 64, torch.float32, "hifloat8", "tensor", 0, True)
    ref = OPS.linear_packed(x, *args, a_s, None)
    assert torch.equal(OPS.linear_packed(x, *args, a_s.double().reshape(1, 1), None), ref)
    assert not torch.equal(OPS.linear_packed(x, *args, a_s * 4, None), ref)

def test_bad_arguments_are_clear_errors():
    packed, scale, _ = packed_weight(7, 64, "int4", "group", 32, True)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="last dimension 63 does not match the weight's 64"):
        OPS.linear_packed(x[:, :63], packed, scale, EMPTY, None, None, "int4", "group", 32, True, 64, torch.float32)
    with pytest.raises(ValueError, match="bytes per row do not match"):
        OPS.linear_packed(torch.randn(2, 66), packed, scale, EMPTY, None, None, "int4", "group", 32, True, 66,
                          torch.float32)
    with pytest.raises(ValueError, match="scale: expected 14 entries"):
        OPS.linear_packed(x, packed, scale[:3], EMPTY, None, None, "int4", "group", 32, True, 64, torch.float32)
    with pytest.raises(ValueError, match="bias: 3 entries, expected 7"):
        OPS.linear_packed(x, packed, scale, EMPTY, None, torch.ones(3), "int4", "group", 32, True, 64, torch.float32)
    with pytest.raises(TypeError, match="packed: dtype"):
        OPS.linear_packed(x, packed.float(), scale, EMPTY, None, None, "int4", "group", 32, True, 64, torch.float32)
    with pytest.raises(ValueError, match="bits 5; allowed: 8, 4"):
        OPS.linear_int8(x, packed, scale[:, 0].contiguous(), 5, 64, True, torch.ones(1), torch.zeros(1), None)


def test_converted_model_keeps_no_float_weights():
    import gc
    import weakref

    import lowbit
    from lowbit.modules.deploy import DeployLayer
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 128))
    refs = [weakref.ref(model[0].weight), weakref.ref(model[2].weight)]
    float_bytes = lowbit.model_bytes(model)
    lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 32}}})
    lowbit.convert(model)
    gc.collect()
    assert all(r() is None for r in refs), "a float weight is still alive after convert"
    packed = sum(m.packed_bytes() for m in model.modules() if isinstance(m, DeployLayer))
    biases = (512 + 128) * 4
    assert packed == 256 * 512 // 2 + 512 * 8 * 4 + 512 * 128 // 2 + 128 * 16 * 4  # codes + one scale per group
    # everything the model holds: packed weights, scales, biases, the recorded errors and
    # each layer's op plan (13 int64: the product's spec and the kernel choice)
    assert lowbit.model_bytes(model) == packed + biases + 2 * 8 + 2 * 13 * 8
    assert lowbit.model_bytes(model) < float_bytes / 5


@pytest.mark.parametrize("isa", ISAS)
def test_conv2d_packed_geometries_and_dtypes(isa):
    """Direct convolution from padded input planes (and, where that would waste too much,
    patches packed into the GEMM tiles): strides, dilation, uneven padding, groups,
    non-square kernels, every activation dtype, against F.conv2d on unpack()."""
    OPS.set_isa(isa)
    geometries = [  # (cin, cout, kernel, stride, padding, dilation, groups, h, w)
        (3, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, 9, 11), (8, 12, (3, 3), (2, 2), (1, 1), (1, 1), 2, 10, 7),
        (4, 8, (1, 3), (1, 2), (0, 1), (1, 1), 1, 5, 9), (6, 6, (3, 3), (1, 1), (2, 2), (2, 2), 6, 8, 8),
        (16, 33, (1, 1), (1, 1), (0, 0), (1, 1), 1, 4, 4),
        (5, 7, (5, 5), (1, 1), (0, 0), (1, 1), 1, 7, 7),  # packed patches (a direct conv would waste 4/7)
        # output channels in the vectors (32, 48 per group, 64)
        (8, 32, (3, 3), (2, 2), (1, 1), (1, 1), 1, 9, 10), (12, 96, (3, 3), (1, 1), (2, 2), (2, 2), 2, 6, 7),
        (4, 64, (3, 3), (1, 1), (1, 1), (2, 2), 1, 7, 6)]
    for (cin, cout, kern, stride, pad, dil, groups, h, w), fmt, dtype in itertools.product(
            geometries, [("int4", "group", 32), ("hifloat8", "channel", 0), ("float4_e2m1", "group", 32)], DTYPES):
        fmt, gran, gs = fmt
        k = cin // groups * kern[0] * kern[1]
        if gran == "group" and gs > k:
            gran, gs = "channel", 0
        if fmt == "float4_e2m1" and gran != "group":
            continue
        packed, scale, offset = packed_weight(cout, k, fmt, gran, gs, True, seed=cin + cout)
        wd = formats.unpack(packed, fmt, scale, k, offset, gran, gs, True, dtype).reshape(cout, cin // groups, *kern)
        x = torch.randn(2, cin, h, w).to(dtype)
        bias = torch.randn(cout)
        got = OPS.conv2d_packed(x, packed, scale, EMPTY, None, bias, fmt, gran, gs, True, k, dtype, list(kern),
                                list(stride), list(pad), list(dil), groups)
        want = F.conv2d(x.float(), wd.float(), bias, stride, pad, dil, groups).to(dtype)
        assert_close_to_reference(got, want, k, what=f"{isa} {fmt} conv {cin}->{cout} {kern} s{stride} {dtype}")


@pytest.mark.parametrize("isa", ISAS)
def test_conv2d_reads_and_writes_channels_last(isa):
    """A channels-last input (what CIFAR images permuted from NHWC are) gives a channels-last
    output equal to the NCHW result: read directly by the channel-vector tiling (32/64
    output channels), converted for the others (12 channels, groups, the INT8 kernel)."""
    OPS.set_isa(isa)
    for cin, cout, stride, groups, dtype in [(16, 32, 1, 1, torch.float32), (8, 64, 2, 1, torch.bfloat16),
                                             (16, 64, 1, 2, torch.float32), (6, 12, 1, 1, torch.float16)]:
        k = cin // groups * 9
        packed, scale, _ = packed_weight(cout, k, "int8", "channel", 0, True, seed=cout)
        x = torch.randn(3, cin, 11, 10).to(dtype)
        xl = x.contiguous(memory_format=torch.channels_last)
        geometry = ([3, 3], [stride, stride], [1, 1], [1, 1], groups)
        args = (packed, scale, EMPTY, None, torch.randn(cout), "int8", "channel", 0, True, k, dtype, *geometry)
        want = OPS.conv2d_packed(x, *args)
        got = OPS.conv2d_packed(xl, *args)
        assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
        assert want.is_contiguous()
        assert_close_to_reference(got, want, k, what=f"{isa} channels-last {cin}->{cout} s{stride} g{groups} {dtype}")
    # full quantization: the activation QDQ keeps the layout too
    packed, scale, _ = packed_weight(32, 72, "hifloat8", "channel", 0, True, seed=3)
    x = torch.randn(2, 8, 9, 9)
    a_scale = torch.tensor([float(x.abs().max()) / 15])
    args = (packed, scale, EMPTY, None, None, "hifloat8", "channel", 0, True, 72, torch.float32, [3, 3], [1, 1],
            [1, 1], [1, 1], 1, "hifloat8", True, a_scale, torch.zeros(1, dtype=torch.int32))
    got = OPS.conv2d_packed(x.contiguous(memory_format=torch.channels_last), *args)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(got, OPS.conv2d_packed(x, *args), 72, what=f"{isa} channels-last hif8 x hif8")

    def int8_conv(cout, x):  # int8 weights and x's static per-tensor int8 scale; 3x3, padding 1
        c = types.SimpleNamespace(k=x.shape[1] * 9)
        c.packed, c.ws, c.wo = packed_weight(cout, c.k, "int8", "channel", 0, True, seed=cout)
        c.a_s, c.a_o = formats.compute_scales(x, "int8", "tensor", 0, True)
        c.args = (c.packed, c.ws.reshape(-1), 8, c.k, c.a_s, c.a_o, None, [3, 3], [1, 1], [1, 1], [1, 1], 1)
        return c

    x = torch.randn(2, 8, 9, 9)
    c = int8_conv(16, x)
    got = OPS.conv2d_int8(x.contiguous(memory_format=torch.channels_last), *c.args)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, OPS.conv2d_int8(x, *c.args))
    # wide rows and 40 channels: the NCHW input is regrouped in 16 x 16 byte tiles plus tails
    x = torch.randn(2, 40, 7, 37)
    c = int8_conv(32, x)
    got = OPS.conv2d_int8(x, *c.args)
    assert torch.equal(got, OPS.conv2d_int8(x.contiguous(memory_format=torch.channels_last), *c.args))
    wd = formats.unpack(c.packed, "int8", c.ws, c.k, c.wo, "channel", 0, True).reshape(32, 40, 3, 3)
    want = F.conv2d(formats.fake_quant(x, "int8", "tensor", 0, True, scale=c.a_s, offset=c.a_o), wd, None, 1, 1)
    assert_close_to_reference(got, want, c.k, what=f"{isa} int8 conv, 40 channels, NCHW")


@pytest.mark.parametrize("isa", ISAS)
def test_conv2d_channels_last_row_tiles(isa):
    """Channels-last layers whose output rows split into whole pixel tiles (16, 8 or 4 wide)
    and whose pixel stride (stride x channels) is 16, 32, 64 or 128 floats take the row tiles,
    which in fp32 accumulate in the output itself from the bias, over one or more k blocks."""
    OPS.set_isa(isa)
    cases = [(16, 16, 1, 5, 16, torch.float32), (32, 32, 1, 4, 8, torch.float32), (64, 64, 1, 3, 8, torch.float32),
             (16, 32, 2, 6, 16, torch.float32), (64, 64, 2, 4, 8, torch.float32), (32, 32, 1, 4, 8, torch.bfloat16)]
    for cin, cout, stride, h, w, dtype in cases:
        k = cin * 9
        packed, scale, _ = packed_weight(cout, k, "int4", "channel", 0, True, seed=cin + cout)
        x = torch.randn(3, cin, h, w).to(dtype)
        bias = torch.randn(cout)
        args = (packed, scale, EMPTY, None, bias, "int4", "channel", 0, True, k, dtype, [3, 3], [stride, stride],
                [1, 1], [1, 1], 1)
        got = OPS.conv2d_packed(x.contiguous(memory_format=torch.channels_last), *args)
        assert got.is_contiguous(memory_format=torch.channels_last)
        want = OPS.conv2d_packed(x, *args)
        assert got.shape == want.shape == (3, cout, (h - 1) // stride + 1, (w - 1) // stride + 1)
        assert_close_to_reference(got, want, k, what=f"{isa} row tiles {cin}->{cout} s{stride} {w} wide {dtype}")



@pytest.mark.parametrize("isa", ISAS)
def test_conv2d_batches_in_several_passes(isa):
    """A batch larger than one pass of the direct convolution (planes and results of at
    most 2 MB: fifteen 16-channel 32 x 32 images) is done pass by pass; every image's output
    equals the reference, in both tilings and layouts, with the activation QDQ fused."""
    OPS.set_isa(isa)
    for cout, channels_last in [(16, False), (16, True), (12, False)]:
        k = 16 * 9
        packed, scale, offset = packed_weight(cout, k, "hifloat8", "channel", 0, True, seed=cout)
        x = torch.randn(33, 16, 32, 32)
        a_scale = torch.tensor([float(x.abs().max()) / 15])
        args = (packed, scale, EMPTY, None, torch.randn(cout), "hifloat8", "channel", 0, True, k, torch.float32,
                [3, 3], [1, 1], [1, 1], [1, 1], 1, "hifloat8", True, a_scale, torch.zeros(1, dtype=torch.int32))
        got = OPS.conv2d_packed(x.contiguous(memory_format=torch.channels_last) if channels_last else x, *args)
        wd = formats.unpack(packed, "hifloat8", scale, k, offset, "channel", 0, True).reshape(cout, 16, 3, 3)
        xq = formats.fake_quant(x, "hifloat8", "tensor", 0, True, scale=a_scale)
        want = F.conv2d(xq, wd, args[4], 1, 1)
        assert_close_to_reference(got, want, k, what=f"{isa} {cout} channels, channels_last={channels_last}")


@pytest.mark.parametrize("isa", ISAS)
def test_conv2d_activation_qdq_fused_into_the_planes(isa):
    """fp32 inputs of the direct convolution are fake-quantized while they are copied into
    its padded planes. The output must equal, bit for bit, the same op run on the input
    quantized beforehand, for every path: output channels in the vectors or positions,
    NCHW and channels-last, strides 1 and 2, one and two k blocks, bias, NaN pixels, and
    the paths that still quantize in a separate pass (bf16 input, the patch kernel)."""
    OPS.set_isa(isa)
    cases = [(16, 16, 1, 9, 11, torch.float32), (8, 32, 2, 12, 10, torch.float32),
             (3, 12, 1, 8, 8, torch.float32), (40, 64, 1, 6, 7, torch.float32),  # 360 columns: two k blocks
             (16, 48, 2, 9, 9, torch.float32), (4, 12, 1, 5, 2, torch.float32),  # 2 wide: patch kernel
             (8, 32, 1, 7, 7, torch.bfloat16)]
    for (cin, cout, stride, h, w, dtype), (fmt, sym) in itertools.product(
            cases, [("hifloat8", True), ("float8_e4m3fn", True), ("int8", False)]):
        k = cin * 9
        packed, scale, _ = packed_weight(cout, k, "hifloat8", "channel", 0, True, seed=cin + cout)
        bias = torch.randn(cout)
        x = (torch.randn(2, cin, h, w) * 3 + 0.5).to(dtype)
        x[1, 0, h // 2, w // 2] = float("nan")
        a_s, a_o = formats.compute_scales(x[0:1].float(), fmt, "tensor", 0, sym)
        xq = formats.fake_quant(x, fmt, "tensor", 0, sym, scale=a_s, offset=a_o)
        args = (packed, scale, EMPTY, None, bias, "hifloat8", "channel", 0, True, k, dtype, [3, 3],
                [stride, stride], [1, 1], [1, 1], 1)
        for layout in (torch.contiguous_format, torch.channels_last):
            what = f"{isa} {cin}->{cout} s{stride} {h}x{w} {dtype} {fmt} {layout}"
            got = OPS.conv2d_packed(x.contiguous(memory_format=layout), *args, fmt, sym, a_s, a_o)
            want = OPS.conv2d_packed(xq.contiguous(memory_format=layout), *args)
            assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(got[1]).any(), what
            assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want)), what
            plain = OPS.conv2d_packed(x.contiguous(memory_format=layout), *args)
            assert not torch.equal(torch.nan_to_num(got), torch.nan_to_num(plain)), what  # it did quantize
    with pytest.raises(ValueError, match="mxfp8_e4m3fn uses blocks of 32"):  # convolutions: per tensor only
        OPS.conv2d_packed(x, *args, "mxfp8_e4m3fn", True, None, None)

@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("asym,bits", [(False, 8), (True, 8), (True, 4)])
def test_conv2d_int8_matches_reference_and_propagates_nan(isa, asym, bits):
    OPS.set_isa(isa)
    torch.manual_seed(bits)
    # (the first and the last two run the VNNI direct kernel where the CPU has it: 16/32/64 output channels)
    for cin, cout, kern, stride, pad, groups, dtype in [(3, 16, (3, 3), (1, 1), (1, 1), 1, torch.float32),
                                                          (8, 12, (3, 3), (2, 2), (1, 1), 2, torch.bfloat16),
                                                          (4, 8, (1, 3), (1, 2), (0, 1), 1, torch.float32),
                                                          (12, 64, (3, 3), (2, 2), (1, 1), 2, torch.float32),
                                                          (8, 64, (3, 2), (1, 1), (1, 0), 1, torch.float16)]:
        k = cin // groups * kern[0] * kern[1]
        fmt = "int8" if bits == 8 else "int4"
        w = torch.randn(cout, k)
        ws, wo = formats.compute_scales(w, fmt, "channel", 0, True)
        packed = formats.pack(w, fmt, ws, wo, "channel", 0, True)
        wd = formats.unpack(packed, fmt, ws, k, wo, "channel", 0, True).reshape(cout, cin // groups, *kern)
        x = (torch.randn(2, cin, 9, 10) + (2.0 if asym else 0.0)).to(dtype)
        a_s, a_o = formats.compute_scales(x.float(), "int8", "tensor", 0, not asym)
        bias = torch.randn(cout)
        got = OPS.conv2d_int8(x, packed, ws.reshape(-1), bits, k, a_s, a_o, bias, list(kern), list(stride), list(pad),
                              [1, 1], groups)
        xq = formats.fake_quant(x.float(), "int8", "tensor", 0, not asym, scale=a_s, offset=a_o)
        want = F.conv2d(xq, wd, bias, stride, pad, 1, groups).to(dtype)
        assert_close_to_reference(got, want, k, what=f"{isa} int8 conv {cin}->{cout} asym={asym}")
        x[1, 0, 4, 4] = float("nan")
        got = OPS.conv2d_int8(x, packed, ws.reshape(-1), bits, k, a_s, a_o, bias, list(kern), list(stride), list(pad),
                              [1, 1], groups)
        want = F.conv2d(formats.fake_quant(x.float(), "int8", "tensor", 0, not asym, scale=a_s, offset=a_o), wd, bias,
                        stride, pad, 1, groups)
        assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(got).any()


@pytest.mark.parametrize("act", [("hifloat8", "tensor", 0, True), ("float8_e4m3fn", "tensor", 0, True),
                                 ("int8", "tensor", 0, False), ("int8", "token", 0, True),
                                 ("mxfp8_e4m3fn", "group", 32, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_packed_quantizes_activations_inside(act, dtype):
    """Full quantization in one op: the activation QDQ inside linear_packed equals the
    fake-quant op applied first, bit for bit, so the outputs are identical."""
    fmt, gran, gs, sym = act
    packed, scale, _ = packed_weight(9, 96, "float8_e4m3fn", "channel", 0, True)
    x = (torch.randn(5, 96) * 3 + 0.5).to(dtype)
    static = gran == "tensor"
    if static:
        a_s, a_o = formats.compute_scales(x.float(), fmt, "tensor", 0, sym)
        xq = formats.fake_quant(x, fmt, "tensor", 0, sym, scale=a_s, offset=a_o)
    else:
        a_s = a_o = None
        xq = formats.fake_quant(x, fmt, gran, gs, sym)
    args = (packed, scale, EMPTY, None, None, "float8_e4m3fn", "channel", 0, True, 96, dtype)
    got = OPS.linear_packed(x, *args, fmt, gran, gs, sym, a_s, a_o)
    assert torch.equal(got, OPS.linear_packed(xq, *args))
    assert not torch.equal(got, OPS.linear_packed(x, *args))  # the quantization did happen
    with pytest.raises(ValueError, match="act_scale: a static per-tensor activation needs one scale"):
        OPS.linear_packed(x, *args, "hifloat8", "tensor", 0, True, None, None)


def test_many_rows_run_in_passes():
    """More than 4096 activation rows: the GEMM works in passes of rows (bounded scratch);
    results across the pass boundary are unchanged, for Linear and Conv2d."""
    packed, scale, offset = packed_weight(7, 64, "int4", "group", 32, True)
    x = torch.randn(4100, 64)
    got = OPS.linear_packed(x, packed, scale, EMPTY, None, None, "int4", "group", 32, True, 64, torch.float32)
    want = reference(x, packed, scale, offset, "int4", "group", 32, True, 64, torch.float32, None)
    assert_close_to_reference(got, want, 64, magnitude=magnitude(x, packed, scale, offset, "int4", "group", 32, True,
                                                                  64, None))
    assert torch.equal(got[4090:], OPS.linear_packed(x[4090:], packed, scale, EMPTY, None, None, "int4", "group", 32,
                                                     True, 64, torch.float32))
    cp, cs, co = packed_weight(12, 27, "hifloat8", "channel", 0, True)
    xc = torch.randn(5, 3, 30, 31)  # 5 x 30 x 31 = 4650 patch rows; the pass boundary falls inside an image
    got = OPS.conv2d_packed(xc, cp, cs, EMPTY, None, None, "hifloat8", "channel", 0, True, 27, torch.float32,
                            [3, 3], [1, 1], [1, 1], [1, 1], 1)
    wd = formats.unpack(cp, "hifloat8", cs, 27, co, "channel", 0, True).reshape(12, 3, 3, 3)
    assert_close_to_reference(got, F.conv2d(xc, wd, None, 1, 1), 27)
    # direct convolution: 4 images per pass here, so the passes are 4 + 1 images
    assert torch.equal(got[4:], OPS.conv2d_packed(xc[4:], cp, cs, EMPTY, None, None, "hifloat8", "channel", 0, True, 27,
                                                  torch.float32, [3, 3], [1, 1], [1, 1], [1, 1], 1))
    # packed patches (5 x 5 kernel on 7 x 7 images): 460 x 9 = 4140 rows
    cp, cs, co = packed_weight(12, 75, "hifloat8", "channel", 0, True)
    xc = torch.randn(460, 3, 7, 7)
    got = OPS.conv2d_packed(xc, cp, cs, EMPTY, None, None, "hifloat8", "channel", 0, True, 75, torch.float32,
                            [5, 5], [1, 1], [0, 0], [1, 1], 1)
    wd = formats.unpack(cp, "hifloat8", cs, 75, co, "channel", 0, True).reshape(12, 3, 5, 5)
    assert_close_to_reference(got, F.conv2d(xc, wd), 75)


@pytest.mark.parametrize("conv", [dict(padding=1, padding_mode="reflect"), dict(padding="same"),
                                  dict(padding=2, padding_mode="circular", stride=1, dilation=2)])
@pytest.mark.parametrize("acts", [{"type": "hifloat8"}, {"type": "int8"}, {"type": "float8_e4m3fn"}])
def test_conv_padding_modes_with_quantized_activations(conv, acts):
    import lowbit
    from conftest import assert_deploy_layers_match
    from lowbit.modules import DeployConv2d
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, **conv), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3, padding=1))
    weights = {"type": acts["type"]}
    lowbit.quantize(model, {"quant_cfg": {"weights": weights, "inputs": acts}, "batch_num": 1})
    x = torch.randn(2, 4, 9, 9) + 0.3
    model(x)
    lowbit.convert(model)
    assert isinstance(model[0], DeployConv2d)
    assert assert_deploy_layers_match(model, x) == 2


ACTIVATIONS = [("", "tensor", 0, True), ("int8", "tensor", 0, False), ("hifloat8", "tensor", 0, True),
               ("int8", "token", 0, True), ("mxfp8_e4m3fn", "group", 32, True)]


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("weight", WEIGHTS)
def test_linear_packed_by_spec_equals_linear_packed(weight, act):
    """The deploy modules' form (constant arguments in one tensor from linear_packed_spec)
    gives exactly linear_packed's result."""
    fmt, gran, gs, sym = weight
    k, n = 172, 9
    packed, scale, offset = packed_weight(n, k, fmt, gran, gs, sym)
    offset = EMPTY if sym else offset
    x, bias = torch.randn(5, k), torch.randn(n)
    static = act[0] and act[1] == "tensor"
    a_scale, a_offset = (torch.tensor([0.03]), torch.tensor([3 if not act[3] else 0], dtype=torch.int32)) \
        if static else (None, None)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        args = (fmt, gran, gs, sym, k, dtype, *act)
        spec = OPS.linear_packed_spec(*args)
        assert spec.dtype == torch.int64 and spec.shape == (10,)
        want = OPS.linear_packed(x.to(dtype), packed, scale, offset, None, bias, *args, a_scale, a_offset)
        got = OPS.linear_packed_by_spec(x.to(dtype), packed, scale, offset, None, bias, spec, a_scale, a_offset)
        assert torch.equal(got, want), (weight, act, dtype)
        smooth = torch.rand(k) + 0.5  # AWQ / SmoothQuant: the op divides x by it, in x's dtype
        for xs in (x, torch.randn(100, k)):  # into its buffer (decoding sizes), or ATen's division
            want = OPS.linear_packed(xs.to(dtype) / smooth.to(dtype), packed, scale, offset, None, bias, *args,
                                     a_scale, a_offset)
            got = OPS.linear_packed_by_spec(xs.to(dtype), packed, scale, offset, None, bias, spec, a_scale,
                                            a_offset, smooth)
            assert torch.equal(got, want), (weight, act, dtype, "smooth", xs.shape)
    xt = torch.randn(k, 5).t()  # a transposed view: x is not contiguous
    want = OPS.linear_packed(xt / smooth, packed, scale, offset, None, bias, fmt, gran, gs, sym, k, torch.float32,
                             *act, a_scale, a_offset)
    spec = OPS.linear_packed_spec(fmt, gran, gs, sym, k, torch.float32, *act)
    got = OPS.linear_packed_by_spec(xt, packed, scale, offset, None, bias, spec, a_scale, a_offset, smooth)
    assert torch.equal(got, want), (weight, act, "smooth, strided x")


def test_linear_packed_spec_errors_name_the_argument():
    with pytest.raises(ValueError, match="format"):
        OPS.linear_packed_spec("int5", "channel", 0, True, 64, torch.float32)
    with pytest.raises(ValueError, match="cols: 0 must be positive"):
        OPS.linear_packed_spec("int8", "channel", 0, True, 0, torch.float32)
    with pytest.raises(TypeError, match="weight_dtype: dtype Long is not supported"):
        OPS.linear_packed_spec("int8", "channel", 0, True, 64, torch.int64)
    packed, scale, _ = packed_weight(4, 64, "int8", "channel", 0, True)
    spec = OPS.linear_packed_spec("int8", "channel", 0, True, 64, torch.float32)
    x = torch.randn(2, 64)
    for bad in (spec.int(), spec[:9], spec.reshape(2, 5)):
        with pytest.raises(ValueError, match="spec: expected the int64 tensor of 10 values"):
            OPS.linear_packed_by_spec(x, packed, scale, EMPTY, None, None, bad)
    for pos, value in ((0, len(formats.FORMATS)), (1, -1), (4, 0), (6, 99)):  # (0: one past the last format)
        bad = spec.clone()
        bad[pos] = value
        with pytest.raises(ValueError, match="spec: not a tensor that linear_packed_spec returned"):
            OPS.linear_packed_by_spec(x, packed, scale, EMPTY, None, None, bad)
    with pytest.raises(ValueError, match="smooth: 63 entries, expected one per input feature of x"):
        OPS.linear_packed_by_spec(x, packed, scale, EMPTY, None, None, spec, None, None, torch.ones(63))
    bad = spec.clone()
    bad[5] = 4  # a ScalarType code that is not a float type (int64)
    with pytest.raises(TypeError, match="spec: weight_dtype"):
        OPS.linear_packed_by_spec(x, packed, scale, EMPTY, None, None, bad)


def _int8_weight_scale(m):
    """The integer kernels' per-row weight scale: w_scale, times w_scale1 after folding."""
    s1 = m._buffers.get("w_scale1")
    return m.w_scale if s1 is None else m.w_scale.reshape(-1) * s1.reshape(-1)


def _per_kernel_forward(m, x):
    """What a deploy Linear computed before its forward became one linear_deploy call: the
    kernel picked in Python, the bias rounded in Python, each op called on its own."""
    b = m._buffers
    bias = m.effective_bias(b["bias"], x.dtype)
    bits = formats.FORMAT_INFO[m.wspec.fmt]["bits"]  # stored bits (int6: bytes, int3: nibbles)
    if m.compute_int8:
        return OPS.linear_dynamic_int8(x, b["weight_packed"], b["w_scale"], bits, m.wspec.gs, m.cols, bias, b["smooth"])
    if m.integer_kernel:
        static = m.static_act
        return OPS.linear_int8(x, b["weight_packed"], _int8_weight_scale(m), bits, m.cols, not static,
                               b["act_scale"] if static else torch.ones(1, 1),
                               b["act_offset"] if static else torch.zeros(1, dtype=torch.int32), bias, b["smooth"])
    spec = OPS.linear_packed_spec(*m._weight_args, *m.activation_args()[:4])
    act_scale, act_offset = (None, None) if m.aspec is None else m.activation_args()[4:]
    return OPS.linear_packed_by_spec(x, b["weight_packed"], b["w_scale"], b["w_offset"], b.get("w_scale1"), bias,
                                     spec, act_scale, act_offset, b["smooth"])


def _convert_builtin(model, name, calib_shape, deploy_type):
    """quantize with the built-in config ``name`` (every layer, two random calibration
    batches of ``calib_shape``), then convert; skips when the config takes none of the
    model's layers."""
    cfg = lowbit.builtin_config(name)
    cfg["batch_num"] = 2
    cfg["skip_layers"] = []
    try:
        lowbit.quantize(model, cfg)
    except ValueError as e:
        pytest.skip(f"{name} does not take these layers: {e}")
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(*calib_shape, dtype=dtype))
    lowbit.convert(model)
    assert any(isinstance(m, deploy_type) for m in model.modules())


@pytest.mark.parametrize("name", lowbit.BUILTIN_CONFIG_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_deploy_equals_the_kernel_it_plans(name, dtype):
    # every built-in config (weight-only, static and per-token INT8 x INT8 with an int32-step
    # bias, HiF8 cast with its unit scale, SmoothQuant's factors, FP8, MX, FP4 two-level),
    # in both compute modes where they apply: bit for bit the op the plan names
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.GELU(), torch.nn.Linear(64, 32)).to(dtype)
    _convert_builtin(model, name, (5, 128), DeployLinear)
    x = torch.randn(7, 128, dtype=dtype) * 3
    for mode in ("exact", "int8"):
        lowbit.set_compute(model, mode)
        h = x
        for m in model:
            if isinstance(m, DeployLinear):
                got = m(h)
                assert torch.equal(got, _per_kernel_forward(m, h)), (name, mode, m.layer_name)
                h = got
            else:
                h = m(h)


def test_deploy_plan_errors_name_the_argument():
    spec = OPS.linear_packed_spec("int4", "group", 32, True, 64, torch.float32)
    fp8 = OPS.linear_packed_spec("float8_e4m3fn", "channel", 0, True, 64, torch.float32)
    with pytest.raises(ValueError, match=r"kernel: 3; allowed: 0 \(packed\), 1 \(int8\), 2 \(dynamic int8\)"):
        OPS.deploy_plan(spec, 3, 0, False)
    with pytest.raises(ValueError, match=r"act_source: -1; allowed: 0 \(none\)"):
        OPS.deploy_plan(spec, 0, -1, False)
    with pytest.raises(ValueError, match=r"plan: the integer kernels take " + names_where("is_int") +
                       r" weights, not float8_e4m3fn"):
        OPS.deploy_plan(fp8, 2, 0, False)
    plan = OPS.deploy_plan(spec, 0, 1, False)
    x, packed = torch.randn(2, 64), torch.zeros(8, 32, dtype=torch.uint8)
    scale = torch.ones(8, 2)
    with pytest.raises(ValueError, match=r"act_scale: the plan takes a static activation scale, none was given"):
        OPS.linear_deploy(x, packed, scale, EMPTY, None, None, plan)
    for bad in (spec, plan[:-1], plan.float(), torch.cat([spec, torch.tensor([5, 0, 0])])):
        with pytest.raises(ValueError, match=r"plan: "):
            OPS.linear_deploy(x, packed, scale, EMPTY, None, None, bad)


def _per_kernel_conv_forward(m, x):
    """What a deploy Conv2d computed before its forward became one conv2d_deploy call."""
    b = m._buffers
    x = m.smoothed(x)
    bias = m.effective_bias(b["bias"], x.dtype)
    act_fmt, _, _, act_sym, act_scale, act_offset = m.activation_args()
    pad = m.padding
    if m.padding_mode != "zeros" or isinstance(pad, str):
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        y = m.act_only(x) if act_fmt else x
        # (the old forward raised here for bf16 reflect padding: torch 1.13 has no such kernel)
        x = F.pad(y.float(), m._reversed_padding_repeated_twice, mode=mode).to(y.dtype) if mode == "reflect" \
            else F.pad(y, m._reversed_padding_repeated_twice, mode=mode)
        pad, act_fmt = (0, 0), ""
    geometry = (list(m.kernel_size), list(m.stride), list(pad), list(m.dilation), m.groups)
    if m.integer_kernel:
        return OPS.conv2d_int8(x, b["weight_packed"], _int8_weight_scale(m), formats.FORMAT_INFO[m.wspec.fmt]["bits"], m.cols,
                               b["act_scale"], b["act_offset"], bias, *geometry)
    return OPS.conv2d_packed(x, b["weight_packed"], b["w_scale"], b["w_offset"], b.get("w_scale1"), bias,
                             *m._weight_args, *geometry, act_fmt, act_sym, act_scale, act_offset)


@pytest.mark.parametrize("name", lowbit.BUILTIN_CONFIG_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv2d_deploy_equals_the_kernel_it_plans(name, dtype):
    # zero, reflect and "same" padding, groups, a BatchNorm folded into one layer
    from lowbit.modules.deploy import DeployConv2d
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect", groups=2),
                                torch.nn.Conv2d(16, 8, 3, padding="same", bias=False)).to(dtype).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
    _convert_builtin(model, name, (2, 8, 10, 10), DeployConv2d)
    h = torch.randn(3, 8, 10, 10, dtype=dtype) * 2
    with torch.no_grad():
        for m in model:
            if isinstance(m, DeployConv2d):
                got = m(h)
                assert torch.equal(got, _per_kernel_conv_forward(m, h)), (name, m.layer_name)
                h = got
            else:
                h = m(h)

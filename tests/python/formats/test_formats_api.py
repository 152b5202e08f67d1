"""torch.ops.lowbit through the Python wrappers: dtypes, ranks, layouts, packing,
special values, errors, and agreement with the same math composed from torch ops."""
import math

import pytest
import torch

import lowbit
from format_cases import case_id, names_where, quant_cases

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CASES = quant_cases()  # every row of the format table (format, granularity, group_size, symmetric)


def torch_int_qdq(x, bits, sym, group):
    """Reference composed from torch ops (formats.md INT rules), per group along K."""
    r, k = x.shape
    pad = (-k) % group
    xp = torch.nn.functional.pad(x, (0, pad), value=float("nan")).view(r, -1, group)
    mx = torch.where(xp.isnan(), torch.full_like(xp, -math.inf), xp).amax(-1, keepdim=True)
    mn = torch.where(xp.isnan(), torch.full_like(xp, math.inf), xp).amin(-1, keepdim=True)
    if sym:
        q = torch.where(mn.abs() > mx.abs(), 2.0 ** (bits - 1), 2.0 ** (bits - 1) - 1)
        s = torch.maximum(mx.abs(), mn.abs()) / q
        s = torch.where(s < 1.192092896e-7, torch.ones_like(s), s)
        y = torch.clamp(torch.round(xp / s), -2 ** (bits - 1), 2 ** (bits - 1) - 1) * s
    else:
        hi, lo = mx.clamp(min=0), mn.clamp(max=0)
        s = (hi - lo) / (2 ** bits - 1)
        bad = s < 1.192092896e-7
        s = torch.where(bad, torch.ones_like(s), s)
        o = torch.where(bad, torch.full_like(s, -2.0 ** (bits - 1)), torch.round(-2 ** (bits - 1) - lo / s))
        y = (torch.clamp(torch.round(xp / s + o), -2 ** (bits - 1), 2 ** (bits - 1) - 1) - o) * s
    return y.view(r, -1)[:, :k]


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("k,group", [(172, 32), (33, 32), (4096, 128), (64, 64)])
def test_int_matches_composed_torch(bits, sym, k, group):
    torch.manual_seed(k + bits)
    x = torch.randn(6, k) * torch.rand(6, 1) * 3
    got = lowbit.fake_quant(x, f"int{bits}", "group", group, symmetric=sym)
    want = torch_int_qdq(x, bits, sym, group)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_dtype_in_dtype_out_equals_fp32_math(case, dtype):
    fmt, gran, gs, sym = case
    torch.manual_seed(0)
    x = (torch.randn(5, 172) * 2).to(dtype)
    y = lowbit.fake_quant(x, fmt, gran, gs, sym)
    assert y.dtype == dtype and y.shape == x.shape
    # the math is fp32 on the exact fp32 value of the input; only the output is rounded
    assert torch.equal(y, lowbit.fake_quant(x.float(), fmt, gran, gs, sym).to(dtype))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_pack_unpack_roundtrip_and_sizes(case):
    fmt, gran, gs, sym = case
    if gran == "token":
        gran = "channel"
    torch.manual_seed(1)
    x = torch.randn(3, 4, 33)
    scale, offset = lowbit.compute_scales(x, fmt, gran, gs, sym)
    packed = lowbit.pack(x, fmt, scale, offset, gran, gs, sym)
    assert packed.dtype == torch.uint8
    assert packed.shape == (3, 4, lowbit.packed_row_bytes(fmt, 33))
    back = lowbit.unpack(packed, fmt, scale, 33, offset, gran, gs, sym)
    assert torch.equal(back, lowbit.fake_quant(x, fmt, gran, gs, sym, scale=scale, offset=offset))
    if fmt.startswith("mx"):
        assert scale.dtype == torch.uint8 and scale.shape == (3, 4, 2)


def test_packed_sizes_are_what_formats_promise():
    assert lowbit.packed_row_bytes("int4", 33) == 17
    assert lowbit.packed_row_bytes("int8", 33) == 33
    assert lowbit.packed_row_bytes("mxfp4_e2m1", 33) == 32  # two blocks of 16 bytes
    assert lowbit.packed_row_bytes("mxfp8_e4m3fn", 33) == 64
    x = torch.tensor([[1.0, -1.0, 7.0, -8.0, 3.0]])
    one = torch.ones(1, 1)
    p = lowbit.pack(x, "int4", one, granularity="tensor")
    assert p.tolist() == [[0xF1, 0x87, 0x03]]  # low nibble first, two's complement
    assert lowbit.packed_row_bytes("int3", 33) == 17  # int3 codes -4..3 in nibbles, read by the int4 decoders
    p3 = lowbit.pack(torch.tensor([[1.0, -1.0, 3.0, -4.0, 2.0, 9.0]]), "int3", one, granularity="tensor")
    assert p3.tolist() == [[0xF1, 0xC3, 0x32]]  # 9 clamps to 3


@pytest.mark.parametrize("rank", [1, 2, 3, 4, 5, 6])
def test_every_rank_equals_the_2d_view(rank):
    torch.manual_seed(rank)
    shape = [2] * (rank - 1) + [40]
    x = torch.randn(*shape)
    for fmt, gran, gs in [("int4", "group", 32), ("hifloat8", "token", None), ("mxfp4_e2m1", "group", 32)]:
        y = lowbit.fake_quant(x, fmt, gran, gs)
        assert y.shape == x.shape
        assert torch.equal(y.reshape(-1, 40), lowbit.fake_quant(x.reshape(-1, 40), fmt, gran, gs))
        s, _ = lowbit.compute_scales(x, fmt, gran, gs)
        assert s.shape == tuple(shape[:-1]) + (2 if gran == "group" else 1,)


def test_non_contiguous_inputs():
    torch.manual_seed(3)
    base = torch.randn(64, 96)
    for x in (base.t(), base[:, 5:77], base[::2], base.view(8, 8, 96).transpose(0, 1)):
        assert not x.is_contiguous()
        for fmt, gran, gs in [("int8", "channel", None), ("float4_e2m1", "group", 32), ("hifloat8", "tensor", None)]:
            want = lowbit.fake_quant(x.contiguous(), fmt, gran, gs)
            assert torch.equal(lowbit.fake_quant(x, fmt, gran, gs), want)


def test_out_argument_writes_in_place():
    x = torch.randn(16, 64)
    out = torch.empty_like(x)
    r = lowbit.fake_quant(x, "int8", "channel", out=out)
    assert r.data_ptr() == out.data_ptr()
    assert torch.equal(out, lowbit.fake_quant(x, "int8", "channel"))


def test_special_values():
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[nan, inf, -inf, 0.0, -0.0, 1.0, -3.0, 1e-30] + [0.5] * 24])
    # INT: NaN stays NaN in QDQ; the granule scale ignores NaN; Inf saturates
    y = lowbit.fake_quant(x, "int8", "tensor")
    assert math.isnan(y[0, 0]) and y[0, 1] == y[0, 1] and not math.isnan(y[0, 5])
    # HiF8 keeps infinities and has no -0
    h = lowbit.fake_quant(x[:, 2:], "hifloat8", "tensor", scale=torch.ones(1, 1))
    assert h[0, 0] == -inf and str(h[0, 2].item()) == "0.0"
    # E4M3 saturates infinities
    f = lowbit.fake_quant(x[:, 1:3], "float8_e4m3fn", "tensor", scale=torch.ones(1, 1))
    assert f.tolist() == [[448.0, -448.0]]
    # MX: a block holding NaN or Inf gets the NaN scale byte and a NaN block
    s, _ = lowbit.compute_scales(x, "mxfp8_e4m3fn")
    assert s.tolist() == [[0xFF]]
    assert lowbit.fake_quant(x, "mxfp8_e4m3fn").isnan().all()
    # all-zero granule: scale guard gives 1.0, exact zeros out
    z = torch.zeros(2, 32)
    sz, _ = lowbit.compute_scales(z, "int4", "group", 32)
    assert sz.tolist() == [[1.0], [1.0]] and torch.equal(lowbit.fake_quant(z, "int4", "group", 32), z)


def test_hifloat8_codes_from_python():
    x = torch.tensor([1.0, 1.0625, 0.1, 100.0, 448.0, 28672.0, 2.2e-5])
    assert lowbit.encode(x, "hifloat8").tolist() == [0x08, 0x09, 0x52, 0x4A, 0x62, 0x6E, 0x07]
    codes = torch.arange(256, dtype=torch.uint8)
    v = lowbit.decode(codes, "hifloat8")
    assert int(v.isnan().sum()) == 1 and int(v.isinf().sum()) == 2
    finite = v[v.isfinite()]
    assert torch.equal(lowbit.encode(finite, "hifloat8"), codes[v.isfinite()])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_all_16bit_patterns_same_codes_on_every_isa(dtype):
    patterns = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype).reshape(256, 256)
    isas = lowbit.available_isas()
    try:
        for fmt in ("hifloat8", "float8_e4m3fn", "int8", "float4_e2m1"):
            results = {}
            for isa in sorted(isas):
                lowbit.set_isa(isa)
                results[isa] = (lowbit.encode(patterns, fmt),
                                lowbit.fake_quant(patterns, fmt, "tensor", scale=torch.full((1, 1), 0.37)))
            first = next(iter(results.values()))
            for isa, (codes, qdq) in results.items():
                assert torch.equal(codes, first[0]), (fmt, isa)
                assert torch.equal(qdq.view(torch.int16), first[1].view(torch.int16)), (fmt, isa)
    finally:
        lowbit.set_isa("auto")


def test_errors_name_the_argument_and_allowed_values():
    x = torch.randn(4, 64)
    with pytest.raises(ValueError, match=r"format: 'int5' is not a known format; allowed: int8, int4"):
        lowbit.fake_quant(x, "int5")
    with pytest.raises(ValueError, match=r"group_size: 48 is not a positive multiple of 32"):
        lowbit.fake_quant(x, "int4", "group", 48)
    with pytest.raises(ValueError, match=r"group_size: -32 is not a positive multiple of 32"):
        lowbit.fake_quant(x, "int4", "group", -32)
    with pytest.raises(ValueError, match=r"granularity: 'row' is not allowed; allowed: tensor, channel, group, token"):
        lowbit.fake_quant(x, "int8", "row")
    with pytest.raises(ValueError, match=r"symmetric: False is only allowed for " + names_where("allows_asym")):
        lowbit.fake_quant(x, "hifloat8", "channel", symmetric=False)
    with pytest.raises(ValueError, match=r"mxfp4_e2m1 uses blocks of 32"):
        lowbit.fake_quant(x, "mxfp4_e2m1", "group", 64)
    with pytest.raises(ValueError, match=r"mx_rule: 'ieee' is not allowed; allowed: auto, ocp, ascend"):
        lowbit.fake_quant(x, "mxfp4_e2m1", mx_rule="ieee")
    with pytest.raises(TypeError, match=r"x: dtype Int is not supported; allowed: float32, float16, bfloat16"):
        lowbit.fake_quant(torch.ones(4, 4, dtype=torch.int32), "int8")
    with pytest.raises(TypeError, match=r"x: expected a torch.Tensor, got list"):
        lowbit.fake_quant([1.0, 2.0], "int8")
    with pytest.raises(ValueError, match=r"x: rank 0 is not supported; allowed ranks: 1 to 6"):
        lowbit.fake_quant(torch.tensor(1.0), "int8")
    with pytest.raises(ValueError, match=r"x: rank 7 is not supported; allowed ranks: 1 to 6"):
        lowbit.fake_quant(torch.ones([1] * 7), "int8")
    with pytest.raises(ValueError, match=r"scale: expected 4 entries"):
        lowbit.fake_quant(x, "int8", "channel", scale=torch.ones(3))
    with pytest.raises(TypeError, match=r"scale: dtype Float is not allowed for mxfp8_e4m3fn; expected uint8"):
        lowbit.fake_quant(x, "mxfp8_e4m3fn", scale=torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"isa: 'sse9' is not allowed"):
        lowbit.set_isa("sse9")
    assert lowbit.isa() == lowbit.available_isas()[-1]  # the best row of the ISA registry this CPU runs


def test_static_out_argument_matches_and_checks_shape():
    x = torch.randn(8, 96).bfloat16()
    s, o = lowbit.compute_scales(x, "int4", "group", 32, False)
    out = torch.empty_like(x)
    r = lowbit.fake_quant(x, "int4", "group", 32, False, scale=s, offset=o, out=out)
    assert r.data_ptr() == out.data_ptr()
    assert torch.equal(out, lowbit.fake_quant(x, "int4", "group", 32, False))
    with pytest.raises(ValueError, match=r"out: shape \[8, 95\] does not match x \[8, 96\]"):
        lowbit.fake_quant(x, "int4", "group", 32, False, scale=s, offset=o, out=torch.empty(8, 95).bfloat16())

"""Calibration state stays healthy: a rejected calibration batch (empty, wrong width,
NaN/Inf, activations whose squares overflow the float32 Hessian) is a ValueError naming
the layer, raised before any statistic changes, and calibration goes on afterwards to the
very result of a run that never saw the bad batch. Repeated quantize() calls keep the
skip record."""
import copy
import re
from collections import OrderedDict

import pytest
import torch
from torch import nn

import lowbit
from lowbit.modules import CalibConv2d, CalibLinear

MINMAX_W8A8 = {"quant_cfg": {"weights": {"type": "int8"}, "inputs": {"type": "int8", "strategy": "tensor"}}}
SMOOTHQUANT_PER_TOKEN = {"quant_cfg": {"weights": {"type": "int8"}, "inputs": {"type": "int8", "strategy": "token"}},
                         "algorithm": {"smoothquant": {"smooth_strength": 0.5}}}
HESSIAN = ("gptq", "awq", "ofmr")


def cfg_of(name):
    """A fresh copy of a built-in config (by name) or of a dict above."""
    return getattr(lowbit, name) if isinstance(name, str) else copy.deepcopy(name)


def linear_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(64, 48), act=nn.ReLU(), fc2=nn.Linear(48, 32))).to(dtype)


def conv_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(conv1=nn.Conv2d(4, 8, 3, padding=1), act=nn.ReLU(), conv2=nn.Conv2d(8, 8, 3)))


def linear_batches(n=4, rows=64, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(64, 64, generator=g) / 8
    scale = torch.rand(64, generator=g) ** 3 * 8 + 0.1
    return [((torch.randn(rows, 64, generator=g) @ mix) * scale).to(dtype) for _ in range(n)]


def conv_batches(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, 9, 9, generator=g) * (1 + torch.arange(4.0).reshape(1, 4, 1, 1)) for _ in range(n)]


# (id, config, layer kind) of every built-in algorithm whose layers calibrate
CALIBRATING = [
    ("minmax-w8a8-linear", MINMAX_W8A8, "linear"), ("minmax-w8a8-conv", MINMAX_W8A8, "conv"),
    ("gptq-linear", "INT4_GPTQ_WEIGHT_QUANT_CFG", "linear"), ("gptq-conv", "INT4_GPTQ_WEIGHT_QUANT_CFG", "conv"),
    ("awq-linear", "INT4_AWQ_WEIGHT_QUANT_CFG", "linear"),
    ("smoothquant-linear", "INT8_SMOOTHQUANT_CFG", "linear"),
    ("smoothquant-per-token-linear", SMOOTHQUANT_PER_TOKEN, "linear"),
    ("ofmr-hifp8-linear", "HIFP8_OFMR_CFG", "linear"), ("ofmr-hifp8-conv", "HIFP8_OFMR_CFG", "conv"),
    ("ofmr-fp8-linear", "FP8_OFMR_CFG", "linear"), ("ofmr-fp8-conv", "FP8_OFMR_CFG", "conv"),
    ("quantile-linear", "HIFP8_QUANTILE_CFG", "linear"),
]
# layers that never calibrate: fake-quantized from the first call
NOT_CALIBRATING = [
    ("minmax-weight-only-linear", "INT8_MINMAX_WEIGHT_QUANT_CFG", "linear"),
    ("minmax-weight-only-conv", "INT8_MINMAX_WEIGHT_QUANT_CFG", "conv"),
    ("cast-linear", "HIFP8_CAST_CFG", "linear"), ("mxquant-linear", "MXFP8_QUANT_CFG", "linear"),
]


def make(case, batch_num=3, dtype=torch.float32):
    _, cfg, kind = case
    cfg = cfg_of(cfg)
    cfg["batch_num"] = batch_num
    if kind == "linear":
        model, xs, first = linear_model(dtype=dtype), linear_batches(batch_num + 1, dtype=dtype), "fc1"
    else:
        model, xs, first = conv_model(), conv_batches(batch_num + 1), "conv1"
    lowbit.quantize(model, cfg)
    return model, xs, first


def state(model):
    """Every buffer and parameter, cloned (the calibration statistics live in buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before, what="state"):
    after = state(model)
    assert after.keys() == before.keys(), (what, sorted(after.keys() ^ before.keys()))
    for k, v in before.items():
        a = after[k]
        assert a.shape == v.shape and a.dtype == v.dtype, (what, k, a.shape, v.shape, a.dtype, v.dtype)
        # bit for bit (NaN buffers such as recon_error included)
        assert torch.equal(a.reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), (what, k)


def finish(model, xs):
    with torch.no_grad():
        for x in xs:
            model(x)
    return model


def case_id(c):
    return c[0]


# ---- 1. empty calibration batches ----

@pytest.mark.parametrize("at", [1, 2])
@pytest.mark.parametrize("case", CALIBRATING, ids=case_id)
def test_empty_calibration_batch_is_an_error_that_changes_nothing(case, at):
    model, xs, first = make(case)
    ref = finish(copy.deepcopy(model), xs[:3])
    finish(model, xs[:at - 1])
    empty = xs[0][:0]
    shape = list(empty.shape)
    before = state(model)
    with pytest.raises(ValueError, match=re.escape(f"layer '{first}', calibration batch {at}: empty input "
                                                   f"(shape {shape})")):
        model(empty)
    assert_same_state(model, before, "after the empty batch")
    assert int(getattr(model, first).calib_calls) == at - 1
    # calibration goes on, to the result of a run without the empty batch
    finish(model, xs[at - 1:3])
    assert all(m.calibrated for m in model.modules() if isinstance(m, (CalibLinear, CalibConv2d)))
    assert_same_state(model, state(ref), "finished calibration")
    assert float(getattr(model, first).recon_error) < 0.5 or torch.isnan(getattr(model, first).recon_error)


def test_empty_batch_with_more_dimensions_and_gptq_error_stays_small():
    """[2, 0, 64] is empty too; the reported GPTQ case: it no longer finishes a layer with
    a 0.94 relative output error (plain rounding: 0.085)."""
    model, xs, _ = make(("gptq", "INT4_GPTQ_WEIGHT_QUANT_CFG", "linear"), batch_num=2)
    model(xs[0])
    with pytest.raises(ValueError, match=re.escape("layer 'fc1', calibration batch 2: empty input (shape [2, 0, 64])")):
        model(torch.zeros(2, 0, 64))
    assert not model.fc1.calibrated and model.fc1.hessian.numel() > 0
    model(xs[1])
    rtn = lowbit.quantize(linear_model(), {"quant_cfg": {"weights": {"type": "int4"}}})
    assert model.fc1.calibrated and float(model.fc1.recon_error) < 0.1
    with torch.no_grad():
        mse_gptq = float((model(xs[2]) - linear_model()(xs[2])).pow(2).mean())
        mse_rtn = float((rtn(xs[2]) - linear_model()(xs[2])).pow(2).mean())
    assert mse_gptq < mse_rtn


@pytest.mark.parametrize("case", NOT_CALIBRATING, ids=case_id)
def test_layers_without_calibration_answer_an_empty_batch_with_an_empty_output(case):
    """cast, mxquant and weight-only minmax collect no statistics: an empty input is an
    ordinary (empty) inference call there, as in the deploy modules, and changes nothing."""
    model, xs, first = make(case)
    assert getattr(model, first).calibrated
    before = state(model)
    with torch.no_grad():
        y = model(xs[0][:0])
    assert y.shape[0] == 0 and y.shape[1:] == model(xs[0]).shape[1:]
    assert_same_state(model, before)


# ---- 2. a rejected batch leaves no trace ----

def bad_batch(x, kind):
    x = x.clone()
    if x.dim() == 2:
        at, col = (slice(5, 6), 7), (slice(None), 5)
    else:
        at, col = (1, 2, 3, 4), (slice(None), 1)
    if kind in ("nan", "inf", "-inf"):
        x[at] = float(kind)
    elif kind == "square-overflows":
        x[at] = 3e19  # finite, its square is not a float32
    else:  # "sum-overflows": every square is a float32, their sum over the rows is not
        x[col] = 3e18
    return x


REJECTED = [(c, kind) for c in CALIBRATING for kind in ("nan", "inf", "-inf", "square-overflows", "sum-overflows")
            if kind in ("nan", "inf", "-inf") or c[1] in ("INT4_GPTQ_WEIGHT_QUANT_CFG", "INT4_AWQ_WEIGHT_QUANT_CFG",
                                                         "HIFP8_OFMR_CFG", "FP8_OFMR_CFG")]


@pytest.mark.parametrize("at", [1, 2])
@pytest.mark.parametrize("case,kind", REJECTED, ids=[f"{c[0]}-{k}" for c, k in REJECTED])
def test_rejected_batch_leaves_no_trace_and_calibration_finishes(case, kind, at):
    model, xs, first = make(case)
    ref = finish(copy.deepcopy(model), xs[:3])
    finish(model, xs[:at - 1])
    before = state(model)
    msg = "activations contain NaN or Inf" if kind in ("nan", "inf", "-inf") else "activations too large"
    with pytest.raises(ValueError, match=re.escape(f"layer '{first}', calibration batch {at}: {msg}")):
        model(bad_batch(xs[at - 1], kind))
    assert_same_state(model, before, "after the rejected batch")
    finish(model, xs[at - 1:3])  # every later clean batch is accepted
    assert all(m.calibrated for m in model.modules() if isinstance(m, (CalibLinear, CalibConv2d)))
    assert_same_state(model, state(ref), "finished calibration")
    with torch.no_grad():
        assert torch.equal(model(xs[3]), ref(xs[3]))


@pytest.mark.parametrize("kind", ["nan", "square-overflows"])
def test_rejected_bfloat16_batch_leaves_no_trace(kind):
    case = ("gptq", "INT4_GPTQ_WEIGHT_QUANT_CFG", "linear")
    model, xs, _ = make(case, dtype=torch.bfloat16)
    ref = finish(copy.deepcopy(model), xs[:3])
    model(xs[0])
    before = state(model)
    with pytest.raises(ValueError, match=r"layer 'fc1', calibration batch 2: activations (contain NaN|too large)"):
        model(bad_batch(xs[1], kind))
    assert_same_state(model, before)
    finish(model, xs[1:3])
    assert_same_state(model, state(ref))


def test_hessian_bound_counts_what_the_hessian_already_holds():
    """A batch whose own squares fit, but which would take H past float32 on top of the
    earlier ones, is rejected before it is added."""
    model, xs, _ = make(("gptq", "INT4_GPTQ_WEIGHT_QUANT_CFG", "linear"), batch_num=4)
    big = xs[0].clone()
    big[:, 9] = 1.3e18  # 64 rows: 1.08e38 on H's diagonal, under half of float32's max (1.7e38)
    model(big)
    assert float(model.fc1.hessian[0, 9, 9]) == pytest.approx(64 * 1.3e18 ** 2, rel=1e-5)
    before = state(model)
    with pytest.raises(ValueError, match=r"layer 'fc1', calibration batch 2: activations too large \(up to 1\.3e\+18"):
        model(big)
    assert_same_state(model, before)
    assert torch.isfinite(model.fc1.hessian).all()
    model(xs[1])  # a clean batch still fits
    assert int(model.fc1.calib_calls) == 2


def test_large_linear_batches_and_convolutions_are_checked_for_overflow_too():
    """Rows beyond the Hessian's sample (more than MAX_ROWS) and convolution patches: the
    check looks at the whole input, not at H."""
    from lowbit.algorithms.hessian import MAX_ROWS
    model, xs, _ = make(("gptq", "INT4_GPTQ_WEIGHT_QUANT_CFG", "linear"), batch_num=2)
    x = xs[0].repeat(MAX_ROWS // 64 + 2, 1)
    x[-1, 3] = float("nan")  # a row the Hessian's sample may skip
    before = state(model)
    with pytest.raises(ValueError, match=r"layer 'fc1', calibration batch 1: activations contain NaN or Inf"):
        model(x)
    assert_same_state(model, before)
    conv, cxs, _ = make(("gptq", "INT4_GPTQ_WEIGHT_QUANT_CFG", "conv"), batch_num=2)
    before = state(conv)
    with pytest.raises(ValueError, match=r"layer 'conv1', calibration batch 1: activations too large \(up to 3e\+19"):
        conv(bad_batch(cxs[0], "square-overflows"))
    assert_same_state(conv, before)


# ---- 3. wrong input width ----

@pytest.mark.parametrize("case", CALIBRATING, ids=case_id)
def test_wrong_width_during_calibration_names_the_layer_and_changes_nothing(case):
    model, xs, first = make(case)
    model(xs[0])
    before = state(model)
    if case[2] == "linear":
        bad = [(xs[1][:, :63], "input width 63 (shape [64, 63]) does not match in_features 64"),
               (torch.tensor(1.0), "expected an input of at least 1 dimension, got shape []")]
    else:
        bad = [(xs[1][:, :3], "input has 3 channels (shape [3, 3, 9, 9]), expected in_channels 4"),
               (xs[1].reshape(3, 4, 81), "input has 3 channels (shape [3, 4, 81]), expected in_channels 4"),
               (xs[1][0, 0], "expected a 3-D or 4-D input, got shape [9, 9]"),
               (xs[1][None], "expected a 3-D or 4-D input, got shape [1, 3, 4, 9, 9]")]
    for x, msg in bad:
        with pytest.raises(ValueError, match=re.escape(f"layer '{first}', calibration batch 2: {msg}")):
            model(x)
        assert_same_state(model, before, msg)
    finish(model, xs[1:3])
    assert all(m.calibrated for m in model.modules() if isinstance(m, (CalibLinear, CalibConv2d)))


def test_wrong_width_after_calibration_and_in_sequential_mode_names_the_layer():
    model, xs, _ = make(("w8a8", MINMAX_W8A8, "linear"), batch_num=1)
    model(xs[0])
    assert model.fc1.calibrated
    with pytest.raises(ValueError, match=re.escape("layer 'fc1': input width 60 (shape [64, 60]) does not match "
                                                   "in_features 64")):
        model(xs[1][:, :60])
    conv, cxs, _ = make(("w8", "INT8_MINMAX_WEIGHT_QUANT_CFG", "conv"))
    with pytest.raises(ValueError, match=re.escape("layer 'conv1': input has 5 channels (shape [3, 5, 9, 9]), "
                                                   "expected in_channels 4")):
        conv(torch.zeros(3, 5, 9, 9))
    # sequential mode: the layers are deferred (float) until their turn
    seq = linear_model()
    cfg = lowbit.INT4_GPTQ_WEIGHT_QUANT_CFG
    cfg["batch_num"] = 2
    lowbit.quantize(seq, cfg, sequential=True)
    assert seq.fc1.deferred
    with pytest.raises(ValueError, match=re.escape("layer 'fc1': input width 63 (shape [64, 63]) does not match "
                                                   "in_features 64")):
        seq.fc1(xs[0][:, :63])


def test_unbatched_conv_input_calibrates_like_a_batch_of_one():
    case = ("gptq-conv", "INT4_GPTQ_WEIGHT_QUANT_CFG", "conv")
    model, xs, _ = make(case, batch_num=2)
    ref = finish(copy.deepcopy(model), [xs[0][:1], xs[1][:1]])
    finish(model, [xs[0][0], xs[1][0]])
    assert_same_state(model, state(ref))


# ---- 4. the skip record of repeated quantize() calls ----

def cnn_with_head():
    torch.manual_seed(0)
    m = nn.Sequential()
    m.add_module("conv", nn.Conv2d(3, 8, 3, padding=1))
    m.add_module("head", nn.Conv2d(8, 4, 1))  # a 1 x 1 convolution classifier head
    m.add_module("flat", nn.Flatten())
    m.add_module("fc1", nn.Linear(4 * 6 * 6, 64))
    m.add_module("fc2", nn.Linear(64, 64))
    m.add_module("fc3", nn.Linear(64, 10))
    return m


def test_second_quantize_keeps_the_first_calls_skips():
    model = cnn_with_head()
    first = lowbit.INT8_MINMAX_WEIGHT_QUANT_CFG
    first["skip_layers"] = {"head", "fc2", "fc3"}
    lowbit.quantize(model, first)
    assert model._lowbit_skipped == {"head": "skip_layers: 'head'", "fc2": "skip_layers: 'fc2'",
                                     "fc3": "skip_layers: 'fc3'"}
    second = lowbit.INT4_AWQ_WEIGHT_QUANT_CFG  # Linear only: leaves the Conv2d head in float
    second["skip_layers"] = {"fc3"}
    lowbit.quantize(model, second)
    assert type(model.head) is nn.Conv2d and type(model.fc3) is nn.Linear
    assert type(model.fc2).__name__ == "AWQLinear"
    # head: still float, the first call's skip kept (with the second call's reason);
    # fc2: quantized by the second call, out of the record; fc3: skipped by both
    assert model._lowbit_skipped == {
        "head": "skip_layers: 'head'; no configured algorithm handles nn.Conv2d (awq)",
        "fc3": "skip_layers: 'fc3'"}
    rows = {r.name: r for r in lowbit.summary(model)}
    assert rows["head"].status == "skipped" and rows["head"].reason.startswith("skip_layers: 'head'")
    assert rows["fc3"].status == "skipped" and rows["fc3"].reason == "skip_layers: 'fc3'"
    assert rows["fc2"].status == "calibrating 0/1" and rows["fc2"].algorithm == "awq"
    assert "skip_layers: 'head'" in str(lowbit.summary(model))
    model(torch.randn(2, 3, 6, 6))
    lowbit.convert(model)
    rows = {r.name: r for r in lowbit.summary(model)}
    assert [n for n, r in rows.items() if r.status == "skipped"] == ["head", "fc3"]
    assert sum(r.status == "deployed" for r in rows.values()) == 3


def test_second_quantize_that_quantizes_every_skipped_layer_empties_the_record():
    model = cnn_with_head()
    first = lowbit.INT8_MINMAX_WEIGHT_QUANT_CFG
    first["skip_layers"] = {"fc"}
    lowbit.quantize(model, first)
    assert sorted(model._lowbit_skipped) == ["fc1", "fc2", "fc3"]
    lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "int4"}}})
    assert model._lowbit_skipped == {}
    assert not any(r.status == "skipped" for r in lowbit.summary(model))


# ---- a real model ----

def test_stories260k_gptq_rejects_an_empty_batch_and_finishes_like_a_clean_run(shared_data):
    from lowbit.eval import lm
    model, tok = lm.load_stories260k()
    tokens = lm.token_batches(tok, lm.CALIB_RANGE, limit=2)
    cfg = lowbit.INT4_GPTQ_WEIGHT_QUANT_CFG
    cfg["batch_num"] = 2
    cfg["skip_layers"] = {"output"}
    ref = lowbit.quantize(copy.deepcopy(model), cfg)
    lowbit.quantize(model, cfg)
    with torch.no_grad():
        ref(tokens[0])
        ref(tokens[1])
        model(tokens[0])
        before = state(model)
        with pytest.raises(ValueError, match=re.escape("layer 'layers.0.attention.wq', calibration batch 2: "
                                                       "empty input (shape [1, 0, 64])")):
            model(tokens[1][:, :0])
        assert_same_state(model, before)
        # NaN activations reaching the first MLP layer (on a copy: the layers before it take the batch)
        other = copy.deepcopy(model)
        w1 = other.layers[0].feed_forward.w1
        w1_before = state(w1)

        def poison(module, args):
            x = args[0].clone()
            x[0, 0, 0] = float("nan")
            return (x,)

        w1.register_forward_pre_hook(poison)
        with pytest.raises(ValueError, match=re.escape("layer 'layers.0.feed_forward.w1', calibration batch 2: "
                                                       "activations contain NaN or Inf")):
            other(tokens[1])
        assert_same_state(w1, w1_before)
        model(tokens[1])
    assert all(r.status == "calibrated" for r in lowbit.summary(model) if r.status != "skipped")
    assert_same_state(model, state(ref))
    assert torch.equal(model(tokens[0]), ref(tokens[0]))

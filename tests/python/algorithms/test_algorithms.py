"""GPTQ, AWQ, SmoothQuant, OFMR and sequential calibration on small models."""
import copy

import pytest
import torch
from torch import nn

import lowbit
from conftest import assert_close_to_reference, assert_deploy_layers_match
from lowbit.modules import DeployConv2d, DeployLinear


def correlated_inputs(n, k, seed, batches=6):
    """Batches from one distribution: correlated channels, a few outlier channels."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5
    scale = torch.rand(k, generator=g) ** 3 * 8 + 0.1
    return [(torch.randn(n, k, generator=g) @ mix) * scale for _ in range(batches)]


def layer_and_data(k=128, n_out=96, seed=0):
    """A layer, 4 calibration batches and 2 held-out batches of the same distribution."""
    torch.manual_seed(seed)
    lin = nn.Linear(k, n_out)
    xs = correlated_inputs(64, k, seed + 1)
    return lin, xs[:4], xs[4:]


def output_mse(model, ref, xs):
    with torch.no_grad():
        return sum(float((model(x) - ref(x)).pow(2).mean()) for x in xs)


def run(model, cfg, calib, sequential=False):
    cfg = copy.deepcopy(cfg)
    cfg["batch_num"] = len(calib)
    lowbit.quantize(model, cfg, sequential=sequential)
    with torch.no_grad():
        for x in calib:
            model(x)
    return model


W4G = {"type": "int4", "strategy": "group", "group_size": 32}


@pytest.mark.parametrize("weights", [{"type": "int4"}, W4G, {"type": "int4", "strategy": "group", "group_size": 64,
                                                               "symmetric": False},
                                     {**W4G, "scale_dtype": "float16"},
                                     {**W4G, "scale_dtype": "float16", "scale_rule": "signed_max"},
                                     {"type": "int4", "scale_rule": "signed_max"}, {"type": "int8", "strategy": "group",
                                                                         "group_size": 32, "scale_dtype": "float16"},
                                     {"type": "mxfp4_e2m1"}, {"type": "float4_e2m1", "group_size": 32},
                                     {"type": "hifloat8"}, {"type": "float8_e4m3fn", "strategy": "tensor"},
                                     {"type": "int8", "strategy": "tensor"}])
def test_gptq_beats_round_to_nearest_and_deploys(weights):
    lin, xs, test = layer_and_data()
    rtn = run(copy.deepcopy(lin), {"quant_cfg": {"weights": weights}}, xs)
    gptq = run(copy.deepcopy(lin), {"quant_cfg": {"weights": weights}, "algorithm": "gptq"}, xs)
    assert output_mse(gptq, lin, test) < 0.85 * output_mse(rtn, lin, test)
    assert float(gptq.recon_error) < float(rtn.recon_error) or torch.isnan(rtn.recon_error)
    before = gptq(test[0])
    lowbit.convert(gptq)
    assert isinstance(gptq, DeployLinear)
    assert_close_to_reference(gptq(test[0]), before, gptq.cols)


@pytest.mark.parametrize("weights", [{"type": "int4"}, W4G, {"type": "int4", "scale_rule": "signed_max"},
                                     {**W4G, "scale_rule": "signed_max"}])
def test_gptq_clips_symmetric_integer_scales(weights):
    """Rows with one outlier mostly get a scale below max-abs (the clipping search); per channel
    the scale stays within [0.8, 1] of max-abs (group scales are taken later, from the
    error-compensated weights, so only the clipping itself is checked there)."""
    lin, xs, _ = layer_and_data()
    with torch.no_grad():
        lin.weight[::2, 3] = 12.0 * lin.weight.abs().max()  # an outlier in every other row
    rtn = run(copy.deepcopy(lin), {"quant_cfg": {"weights": weights}}, xs)
    gptq = run(copy.deepcopy(lin), {"quant_cfg": {"weights": weights}, "algorithm": "gptq"}, xs)
    ratio = (gptq.w_scale / rtn.w_scale).reshape(gptq.w_scale.shape[0], -1)
    if weights.get("strategy") != "group":
        assert (ratio >= 0.8 - 1e-6).all() and (ratio <= 1.0 + 1e-6).all()
    assert (ratio[::2, 0] < 0.99).float().mean() > 0.8  # most outlier rows (first group) are clipped


def test_gptq_leaves_user_weights_alone_and_handles_dead_inputs():
    lin, xs, _ = layer_and_data()
    for x in xs:
        x[:, :5] = 0.0  # inputs that never carry signal: zero Hessian rows
    w0 = lin.weight.detach().clone()
    q = run(copy.deepcopy(lin), {"quant_cfg": {"weights": W4G}, "algorithm": "gptq"}, xs)
    assert torch.equal(lin.weight, w0)
    wq = q.weight_source()
    assert torch.isfinite(wq).all() and (wq[:, :5] == 0).all()
    assert q.hessian.numel() == 0  # freed once the layer is finalized


def test_gptq_conv2d_with_groups():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=2)
    xs = [torch.randn(4, 8, 10, 10) for _ in range(3)]
    rtn = run(copy.deepcopy(conv), {"quant_cfg": {"weights": {"type": "int4"}}}, xs)
    gptq = run(copy.deepcopy(conv), {"quant_cfg": {"weights": {"type": "int4"}}, "algorithm": "gptq"}, xs)
    assert output_mse(gptq, conv, xs) < output_mse(rtn, conv, xs)
    assert torch.equal(gptq.w_scale, rtn.w_scale)  # convolutions keep max-abs channel scales (no clipping)
    y = gptq(xs[0])
    lowbit.convert(gptq)
    assert isinstance(gptq, DeployConv2d)
    assert_close_to_reference(gptq(xs[0]), y, gptq.cols)


@pytest.mark.parametrize("weights", [W4G, {"type": "mxfp4_e2m1"}, {"type": "int4"}])
def test_awq_beats_round_to_nearest(weights):
    lin, xs, test = layer_and_data(seed=3)
    rtn = run(copy.deepcopy(lin), {"quant_cfg": {"weights": weights}}, xs)
    awq = run(copy.deepcopy(lin), {"quant_cfg": {"weights": weights}, "algorithm": {"awq": {"grids_num": 10}}}, xs)
    assert output_mse(awq, lin, test) < output_mse(rtn, lin, test)
    assert not torch.equal(awq.smooth, torch.ones_like(awq.smooth))
    y = awq(test[0])
    lowbit.convert(awq)
    assert awq.smooth is not None
    assert_close_to_reference(awq(test[0]), y, awq.cols)


@pytest.mark.parametrize("inputs,weights", [
    ({"type": "int8"}, {"type": "int8"}), ({"type": "int8", "strategy": "token"}, {"type": "int8"}),
    ({"type": "int8"}, {"type": "int4"}), ({"type": "hifloat8"}, {"type": "hifloat8"}),
    ({"type": "float8_e4m3fn"}, {"type": "float4_e2m1", "group_size": 32})])
def test_smoothquant_beats_minmax_on_outlier_channels(inputs, weights):
    lin, xs, test = layer_and_data(seed=5)
    base = {"quant_cfg": {"weights": weights, "inputs": inputs}}
    sq = run(copy.deepcopy(lin), {**base, "algorithm": {"smoothquant": {"smooth_strength": 0.5}}}, xs)
    # W4A8 exists only with SmoothQuant; HiF8's tapered range already absorbs outlier
    # channels, so smoothing is not expected to win there (it is checked for exactness)
    if weights["type"] not in ("int4", "hifloat8"):
        mm = run(copy.deepcopy(lin), base, xs)
        assert output_mse(sq, lin, test) < output_mse(mm, lin, test)
    y = sq(test[0])
    lowbit.convert(sq)
    assert_close_to_reference(sq(test[0]), y, sq.cols)


@pytest.mark.parametrize("fmt", ["hifloat8", "float8_e4m3fn"])
@pytest.mark.parametrize("full", [False, True])
def test_ofmr_never_worse_than_minmax_on_calibration_data(fmt, full):
    lin, xs, _ = layer_and_data(seed=7)
    q = {"type": fmt, "strategy": "tensor"}
    qc = {"weights": q, "inputs": q} if full else {"weights": q}
    mm = run(copy.deepcopy(lin), {"quant_cfg": qc}, xs)
    of = run(copy.deepcopy(lin), {"quant_cfg": qc, "algorithm": "ofmr"}, xs)
    if not full:  # the weight loss is measured exactly (from H): MIN-MAX's scale is a candidate
        assert output_mse(of, lin, xs) <= output_mse(mm, lin, xs) * 1.0001
    y = of(xs[0])
    lowbit.convert(of)
    assert_close_to_reference(of(xs[0]), y, of.cols)


@pytest.mark.parametrize("fmt", ["hifloat8", "float8_e4m3fn"])
@pytest.mark.parametrize("rows,k", [(37, 48), (1024, 4096)])  # the second takes many chunks of 2 candidates
@pytest.mark.parametrize("weighted", [False, True])
def test_ofmr_activation_losses_match_a_per_candidate_reference(fmt, rows, k, weighted):
    """The chunked accumulation (all candidates' QDQ errors in one product per chunk) adds
    to each candidate what one candidate at a time gives: the plain output MSE
    sum over rows of ||(x - QDQ_c(x)) W^T||^2 (times each row's weight, when given),
    including a scale so small that every value saturates."""
    from lowbit.algorithms.ofmr import candidates
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, k, generator=g) * 3
    w = torch.randn(5, k, generator=g)
    cand = candidates(torch.tensor([float(x.abs().max()) / 16]), fmt).reshape(-1)
    cand[3] = 1e-30  # every value saturates: a huge error, still finite in float64
    row_w = torch.rand(rows, generator=g, dtype=torch.float64) * 4 if weighted else None
    loss = torch.full((cand.numel(),), 0.25, dtype=torch.float64)
    torch.ops.lowbit.ofmr_act_losses_accumulate(loss, x, w, fmt, cand, row_w)
    for c, s in enumerate(cand.tolist()):
        xq = lowbit.fake_quant(x, fmt, "tensor", 0, True, scale=torch.tensor([[s]]))
        per_row = ((x - xq) @ w.t()).double().pow(2).sum(1)
        want = 0.25 + float((per_row * row_w).sum() if weighted else per_row.sum())
        assert loss[c].item() == pytest.approx(want, rel=1e-6), (c, s)
    with pytest.raises(TypeError, match="loss must be a contiguous float64 tensor"):
        torch.ops.lowbit.ofmr_act_losses_accumulate(loss.float(), x, w, fmt, cand)
    with pytest.raises(ValueError, match="3 row weights for"):
        torch.ops.lowbit.ofmr_act_losses_accumulate(loss, x, w, fmt, cand, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("bad,dtype", [(float("nan"), torch.float32), (float("inf"), torch.float32),
                                       (float("-inf"), torch.bfloat16), (float("nan"), torch.float16)])
@pytest.mark.parametrize("algorithm,weights", [("ofmr", {"type": "hifloat8"}), ("gptq", W4G), ("awq", W4G)])
def test_hessian_algorithms_reject_non_finite_calibration(bad, dtype, algorithm, weights):
    # (these Linear layers check the inputs through H's diagonal, not a pass over x)
    lin, xs, _ = layer_and_data()
    lin = lin.to(dtype)
    xs = [x.to(dtype) for x in xs]
    xs[1][5, 7] = bad
    with pytest.raises(ValueError, match=r"layer '', calibration batch 2: activations contain NaN or Inf"):
        run(lin, {"quant_cfg": {"weights": weights}, "algorithm": algorithm}, xs)


def test_gptq_rejects_activations_whose_squares_overflow():
    lin, xs, _ = layer_and_data()
    xs[2][3, 1] = 3e19  # finite, but x^2 is not a float32
    with pytest.raises(ValueError, match=r"layer '', calibration batch 3: activations too large \(up to 3e\+19"):
        run(lin, {"quant_cfg": {"weights": W4G}, "algorithm": "gptq"}, xs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hessian_accumulates_the_upper_triangle_and_mirrors_it(dtype):
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(m, 70, generator=g) for m in (1, 33, 200)]
    h = torch.full((70, 70), 5.0, dtype=dtype).tril_(-1)  # junk below the diagonal must not matter
    for x in xs:
        torch.ops.lowbit.hessian_accumulate(h, x)
    torch.ops.lowbit.hessian_symmetrize(h)
    ref = sum(x.double().t() @ x.double() for x in xs)
    assert torch.equal(h, h.t())
    torch.testing.assert_close(h.double(), ref, rtol=1e-5, atol=1e-4)
    torch.ops.lowbit.hessian_accumulate(h, torch.zeros(0, 70))  # no rows: unchanged
    assert torch.equal(h, h.t())
    with pytest.raises(ValueError, match=r"hessian_accumulate: H \[70, 70\] does not match rows \[4, 71\]"):
        torch.ops.lowbit.hessian_accumulate(h, torch.zeros(4, 71))
    with pytest.raises(ValueError, match=r"hessian_symmetrize: expected a contiguous square matrix"):
        torch.ops.lowbit.hessian_symmetrize(torch.zeros(3, 4))


class TinyBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, h, gain):
        return h + self.down(torch.relu(self.up(h))) * gain


class TinyNet(nn.Module):
    def __init__(self, d=64, n=3):
        super().__init__()
        self.inp = nn.Linear(32, d)
        self.blocks = nn.ModuleList(TinyBlock(d) for _ in range(n))
        self.head = nn.Linear(d, 10)

    def forward(self, x, gain=1.0):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h, gain)
        return self.head(h)


def test_sequential_calibration_on_blocks_and_sequential():
    torch.manual_seed(0)
    net = TinyNet()
    xs = [torch.randn(16, 32) for _ in range(3)]
    cfg = {"quant_cfg": {"weights": W4G}, "algorithm": "gptq"}
    seq = run(copy.deepcopy(net), cfg, xs, sequential=True)
    assert all(m.calibrated for m in seq.modules() if hasattr(m, "calibrated"))
    assert seq._lowbit_sequential.seconds > 0
    par = run(copy.deepcopy(net), cfg, xs)
    # the sequential run saw quantized inputs downstream: different GPTQ results there
    assert not torch.equal(seq.blocks[2].up.weight_source(), par.blocks[2].up.weight_source())
    assert torch.equal(seq.inp.weight_source(), par.inp.weight_source())  # the first layer sees the same data
    y = seq(xs[0])
    lowbit.convert(seq)
    assert assert_deploy_layers_match(seq, xs[0]) >= 3
    # a plain nn.Sequential is its own trunk: its input is the caller's batch, which the
    # block outputs (written over the cached inputs) must not overwrite
    torch.manual_seed(1)
    s = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    kept = [x.clone() for x in xs]
    for calibrate in (False, True):
        q = lowbit.quantize(copy.deepcopy(s), {**cfg, "batch_num": len(xs)}, sequential=True)
        if calibrate:
            lowbit.calibrate(q, xs)
        else:
            with torch.no_grad():
                for x in xs:
                    q(x)
        assert all(m.calibrated for m in q.modules() if hasattr(m, "calibrated"))
        assert all(torch.equal(x, k) for x, k in zip(xs, kept))


@pytest.mark.parametrize("sequential", [True, False])
def test_calibrate_equals_the_users_loop_and_skips_the_float_answers(sequential):
    torch.manual_seed(0)
    net = TinyNet()
    xs = [torch.randn(16, 32) for _ in range(3)]
    cfg = {"quant_cfg": {"weights": W4G}, "algorithm": "gptq", "batch_num": 3}
    looped = run(copy.deepcopy(net), cfg, xs, sequential=sequential)
    model = lowbit.quantize(copy.deepcopy(net), copy.deepcopy(cfg), sequential=sequential)
    calls = []
    model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    assert lowbit.calibrate(model, [xs[0], (xs[1],), {"x": xs[2]}]) is model
    for (name, a), b in zip(looped.named_modules(), model.modules()):
        if hasattr(a, "calibrated"):
            assert b.calibrated and torch.equal(a.weight_source(), b.weight_source()), name
    # sequential: calibration pass + output pass + the pass that calibrates the head
    # (the user's loop would add one float pass per batch); otherwise one pass per batch
    assert len(calls) == (3 * len(xs) if sequential else len(xs))
    torch.testing.assert_close(model(xs[0]), looped(xs[0]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="calibrate: calibration is already finished"):
        lowbit.calibrate(model, xs)


def test_calibrate_rejects_bad_batches_and_models():
    torch.manual_seed(0)
    xs = [torch.randn(16, 32) for _ in range(3)]
    cfg = {"quant_cfg": {"weights": W4G}, "algorithm": "gptq", "batch_num": 3}
    model = lowbit.quantize(TinyNet(), cfg, sequential=True)
    with pytest.raises(ValueError, match=r"calibrate: got 2 batches, but 3 are needed \(batch_num is 3, 0 already run\)"):
        lowbit.calibrate(model, xs[:2])
    with pytest.raises(TypeError, match=r"batches\[1\]: expected a tensor, a tuple/list of arguments or a dict"):
        lowbit.calibrate(model, [xs[0], 5, xs[2]])
    with pytest.raises(TypeError, match="batches: expected a list of batches, got Tensor"):
        lowbit.calibrate(model, xs[0])
    assert not model._lowbit_sequential.recorded  # nothing was recorded by the failed calls
    with torch.no_grad():
        model(xs[0])  # the user's loop started: two batches are missing
    with pytest.raises(ValueError, match=r"got 3 batches, but 2 are needed \(batch_num is 3, 1 already run\)"):
        lowbit.calibrate(model, xs)
    lowbit.calibrate(model, xs[1:])
    assert all(m.calibrated for m in model.modules() if hasattr(m, "calibrated"))
    with pytest.raises(ValueError, match="calibrate: the model holds no layer that needs calibration"):
        lowbit.calibrate(TinyNet(), xs)
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got list"):
        lowbit.calibrate([], xs)


def test_summary_shows_the_reconstruction_error():
    lin, xs, _ = layer_and_data()
    model = run(nn.Sequential(lin), {"quant_cfg": {"weights": W4G}, "algorithm": "gptq"}, xs)
    row = lowbit.summary(model)[0]
    assert row.algorithm == "gptq" and 0 < row.error < 0.1
    assert "error" in str(lowbit.summary(model)).splitlines()[0]


def test_progress_reports_each_calibrated_layer():
    lin, xs, _ = layer_and_data()
    model = nn.Sequential(copy.deepcopy(lin), nn.ReLU(), nn.Linear(96, 8))
    seen = []
    cfg = {"batch_num": 2, "quant_cfg": {"weights": W4G}, "algorithm": "gptq"}
    lowbit.quantize(model, cfg)
    model[0].progress.layer_done = lambda name, err, sec: seen.append((name, err, sec))
    with torch.no_grad():
        model(xs[0]), model(xs[1])
    assert [s[0] for s in seen] == ["0", "2"]
    assert all(0 < err < 1 and sec >= 0 for _, err, sec in seen)


@pytest.mark.parametrize("algorithm", ["gptq", {"awq": {}}])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_and_awq_solve_on_the_float16_scale_grid(algorithm, symmetric):
    """With scale_dtype float16 every scale the algorithm settles on (GPTQ's per-group
    scales and clipping search, AWQ's clipping) is an fp16 value, and the deployed weights
    are the codes times those scales."""
    lin, xs, _ = layer_and_data()
    w = {**W4G, "symmetric": symmetric, "scale_dtype": "float16"}
    q = run(copy.deepcopy(lin), {"quant_cfg": {"weights": w}, "algorithm": algorithm}, xs)
    lowbit.convert(q)
    assert torch.equal(q.w_scale.half().float(), q.w_scale)
    ref = run(copy.deepcopy(lin), {"quant_cfg": {"weights": {**w, "scale_dtype": "float32"}}, "algorithm": algorithm}, xs)
    lowbit.convert(ref)
    assert not torch.equal(ref.w_scale.half().float(), ref.w_scale)


@pytest.mark.parametrize("algorithm", ["minmax", "gptq", {"awq": {}}])
def test_signed_max_scales_through_every_int4_algorithm(algorithm):
    """scale_rule signed_max (ggml's Q4_0 grid): MIN-MAX, GPTQ (per-group scales from the
    error-compensated weights, clipping search) and AWQ settle on scales of both signs,
    fp16 values, and the deployed layer computes what the calibrated one did."""
    lin, xs, test = layer_and_data()
    w = {**W4G, "scale_dtype": "float16", "scale_rule": "signed_max"}
    q = run(copy.deepcopy(lin), {"quant_cfg": {"weights": w}, "algorithm": algorithm}, xs)
    before = q(test[0])
    lowbit.convert(q)
    s = q.w_scale
    assert (s < 0).any() and (s > 0).any() and torch.equal(s.half().float(), s)
    assert_close_to_reference(q(test[0]), before, q.cols)
    if algorithm == "minmax":  # the largest magnitude of each group is its level -8 (up to fp16 rounding of d)
        g = lin.weight.detach().reshape(96, 4, 32)
        m = g.gather(-1, g.abs().argmax(-1, keepdim=True))[..., 0]
        assert torch.equal(s.reshape(96, 4), (m / -8).half().float())


def test_signed_max_with_int8_inputs_on_the_integer_kernels():
    """W4A8 (integer kernels): a negative per-channel weight scale multiplies the int32 sums."""
    lin, xs, test = layer_and_data()
    cfg = {"quant_cfg": {"weights": {"type": "int4", "scale_rule": "signed_max"}, "inputs": {"type": "int8"}}}
    q = run(copy.deepcopy(lin), cfg, xs)
    before = q(test[0])
    lowbit.convert(q)
    assert (q.w_scale < 0).any() and (q.w_scale > 0).any()
    assert_close_to_reference(q(test[0]), before, q.cols)

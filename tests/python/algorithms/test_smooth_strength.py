"""smooth_strength "auto": SmoothQuant's strength searched per layer on calibration data."""
import pytest
import torch
from torch import nn

import lowbit
from lowbit.algorithms.smoothquant import AUTO_STRENGTHS


def cfg(strength, inputs=None):
    inputs = inputs or {"type": "int8"}
    weights = {"type": "hifloat8" if inputs["type"] == "hifloat8" else "int8"}
    return {"batch_num": 2, "quant_cfg": {"weights": weights, "inputs": inputs},
            "algorithm": {"smoothquant": {"smooth_strength": strength}}}


def outlier_batches(seed):
    torch.manual_seed(seed)
    x = torch.randn(2, 128, 64)
    x[..., 3] *= 40  # an outlier channel, as in LLM activations
    x[..., 17] *= 15
    return list(x)


def calibrated(strength, seed, inputs=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    lowbit.quantize(model, cfg(strength, inputs))
    for b in outlier_batches(seed):
        model(b)
    return model


def test_auto_is_a_legal_value_and_others_are_named():
    assert lowbit.validate_config(cfg("auto"))["algorithm"]["smoothquant"]["smooth_strength"] == "auto"
    with pytest.raises(ValueError, match=r"smooth_strength: 'max' is not allowed; allowed: a float in \(0, 1\) or 'auto'"):
        lowbit.validate_config(cfg("max"))
    with pytest.raises(TypeError, match=r"smooth_strength: expected a float or 'auto', got list"):
        lowbit.validate_config(cfg([0.5]))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("inputs", [{"type": "int8"}, {"type": "int8", "strategy": "token"}, {"type": "hifloat8"}])
def test_auto_never_has_a_higher_calibration_error_than_any_fixed_strength(seed, inputs):
    auto = calibrated("auto", seed, inputs)
    layer = auto[0]
    assert layer.chosen_strength in AUTO_STRENGTHS
    x = torch.cat(outlier_batches(seed))  # every row: 2 x 128 is below AUTO_SCORE_ROWS
    layer.apply_strength(layer.chosen_strength)
    chosen = layer.output_error(x)
    for alpha in AUTO_STRENGTHS:  # each fixed strength's error on the same rows
        layer.apply_strength(alpha)
        assert chosen <= layer.output_error(x) + 1e-12, alpha


def test_auto_picks_a_strength_other_than_the_default_when_it_is_better():
    chosen = {calibrated("auto", seed)[0].chosen_strength for seed in range(4)}
    assert chosen - {0.5}, chosen


def test_a_model_calibrated_with_auto_saves_and_loads(tmp_path):
    model = calibrated("auto", 0)
    lowbit.convert(model)
    x = outlier_batches(5)[0]
    lowbit.save(model, tmp_path)
    fresh = lowbit.load(nn.Sequential(nn.Linear(64, 32)), tmp_path)
    assert torch.equal(fresh(x), model(x))

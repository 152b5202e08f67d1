"""The algorithm table (csrc/config/algorithm_table.cpp) is the one list of built-in
algorithms, their layer types and parameters: the validator, the registry and the
normalized config follow it, and these tests loop over its rows (a new row is tested
without editing them)."""
import pytest
import torch
from torch import nn

import lowbit
from lowbit import _C, registry

TABLE = _C.algorithm_table()
NAMES = [r["name"] for r in TABLE]


def _first_legal(name):
    """(weights, inputs) of the capability table's first row that allows the algorithm."""
    row = next(r for r in _C.capabilities() if name in r["algorithms"])
    return {"type": row["weights"]}, None if row["inputs"] is None else {"type": row["inputs"]}


LEGAL = {name: _first_legal(name) for name in NAMES}  # (a row no capability allows fails here)


def config(name, params=None):
    w, a = LEGAL[name]
    q = {"weights": w} if a is None else {"weights": w, "inputs": a}
    return {"quant_cfg": q, "algorithm": {name: {} if params is None else params}}


def test_the_table_lists_every_builtin_algorithm_once():
    assert len(NAMES) == len(set(NAMES)) and {"minmax", "gptq", "awq", "smoothquant", "ofmr"} <= set(NAMES)
    assert registry.BUILTIN == tuple(NAMES)
    for row in TABLE:
        assert row["layer_types"] and set(row["layer_types"]) <= {"Linear", "Conv2d"} and row["summary"]
        assert _C.algorithm_layer_types(row["name"]) == row["layer_types"]


@pytest.mark.parametrize("row", TABLE, ids=NAMES)
def test_every_row_is_registered_for_exactly_its_layer_types(row):
    for type_name, layer in (("Linear", nn.Linear(4, 4)), ("Conv2d", nn.Conv2d(4, 4, 1))):
        ops = registry.lookup(row["name"], layer)
        if type_name in row["layer_types"]:
            assert ops is not None and ops[0].__name__.endswith(type_name)
        else:
            assert ops is None


@pytest.mark.parametrize("row", TABLE, ids=NAMES)
def test_defaults_fill_the_normalized_config_and_params_are_checked(row):
    name = row["name"]
    defaults = {p["name"]: p["default"] for p in row["params"]}
    assert lowbit.validate_config(config(name))["algorithm"] == {name: defaults}
    assert lowbit.validate_config({**config(name), "algorithm": name})["algorithm"] == {name: defaults}
    if not row["params"]:
        with pytest.raises(ValueError, match=rf"algorithm\.{name}: takes no parameters, got \{{'x': 1\}}"):
            lowbit.validate_config(config(name, {"x": 1}))
        return
    allowed = ", ".join(defaults)
    with pytest.raises(ValueError, match=rf"algorithm\.{name}\.bogus: unknown key; allowed keys: {allowed}"):
        lowbit.validate_config(config(name, {"bogus": 1}))
    for p in row["params"]:
        path = rf"algorithm\.{name}\.{p['name']}"
        if p["kind"] == "positive int":
            assert lowbit.validate_config(config(name, {p["name"]: 7}))["algorithm"][name][p["name"]] == 7
            with pytest.raises(ValueError, match=path + r": 0 must be a positive int"):
                lowbit.validate_config(config(name, {p["name"]: 0}))
            with pytest.raises(TypeError, match=path + r": expected an int, got float 2\.5"):
                lowbit.validate_config(config(name, {p["name"]: 2.5}))
        else:
            assert p["kind"] == "float in (0, 1) or 'auto'"
            got = lowbit.validate_config(config(name, {p["name"]: 0.25}))["algorithm"][name][p["name"]]
            assert got == 0.25 and isinstance(got, float)
            assert lowbit.validate_config(config(name, {p["name"]: "auto"}))["algorithm"][name][p["name"]] == "auto"
            for bad in (0, 1.0, float("nan")):
                with pytest.raises(ValueError, match=path + r": .* is not in the open interval \(0, 1\)"):
                    lowbit.validate_config(config(name, {p["name"]: bad}))
            with pytest.raises(TypeError, match=path + r": expected a float or 'auto', got list"):
                lowbit.validate_config(config(name, {p["name"]: [0.5]}))


@pytest.mark.parametrize("row", [r for r in TABLE if r["params"]], ids=[r["name"] for r in TABLE if r["params"]])
def test_layers_receive_the_validated_parameters(row):
    name = row["name"]
    model = nn.Sequential(nn.Linear(16, 8))
    lowbit.quantize(model, {**config(name), "batch_num": 1})
    assert model[0].layer_cfg["params"] == {p["name"]: p["default"] for p in row["params"]}
    model(torch.randn(4, 16))
    assert model[0].calibrated

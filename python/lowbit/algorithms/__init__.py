"""Calibration modules of the data-driven algorithms. The numerical work is in C++
(csrc/algorithms/); these classes only collect statistics and call it.

Which algorithms exist, the layer types each handles and their parameters are rows of
the C++ algorithm table (csrc/config/algorithm_table.cpp, ``_C.algorithm_table()``);
this module names the calibration module of each (algorithm, layer type) and registers
every row."""
from lowbit import _C, registry
from lowbit.algorithms.awq import AWQLinear
from lowbit.algorithms.gptq import GPTQConv2d, GPTQLinear
from lowbit.algorithms.ofmr import OFMRConv2d, OFMRLinear
from lowbit.algorithms.smoothquant import SmoothQuantLinear
from lowbit.modules import CalibConv2d, CalibLinear, DeployConv2d, DeployLinear

# the algorithms without statistics of their own (minmax, cast, quantile, mxquant) use the
# base modules: their rules are flags of the base classes
CALIBRATION_MODULES = {
    "gptq": {"Linear": GPTQLinear, "Conv2d": GPTQConv2d},
    "ofmr": {"Linear": OFMRLinear, "Conv2d": OFMRConv2d},
    "awq": {"Linear": AWQLinear},
    "smoothquant": {"Linear": SmoothQuantLinear},
}
BASE_MODULES = {"Linear": CalibLinear, "Conv2d": CalibConv2d}
DEPLOY_MODULES = {"Linear": DeployLinear, "Conv2d": DeployConv2d}

for _row in _C.algorithm_table():
    for _type in _row["layer_types"]:
        _calib = CALIBRATION_MODULES.get(_row["name"], BASE_MODULES)[_type]
        registry.register(_row["name"], registry.SOURCE_TYPES[_type], _calib, DEPLOY_MODULES[_type], builtin=True)

"""Calibration modules of the data-driven algorithms. The numerical work is in C++
(csrc/algorithms/); these classes only collect statistics and call it."""
from torch import nn

from lowbit import registry
from lowbit.algorithms.awq import AWQLinear
from lowbit.algorithms.gptq import GPTQConv2d, GPTQLinear
from lowbit.algorithms.ofmr import OFMRConv2d, OFMRLinear
from lowbit.algorithms.smoothquant import SmoothQuantLinear
from lowbit.modules import DeployConv2d, DeployLinear

registry.register("gptq", nn.Linear, GPTQLinear, DeployLinear, builtin=True)
registry.register("gptq", nn.Conv2d, GPTQConv2d, DeployConv2d, builtin=True)
registry.register("ofmr", nn.Linear, OFMRLinear, DeployLinear, builtin=True)
registry.register("ofmr", nn.Conv2d, OFMRConv2d, DeployConv2d, builtin=True)
registry.register("awq", nn.Linear, AWQLinear, DeployLinear, builtin=True)
registry.register("smoothquant", nn.Linear, SmoothQuantLinear, DeployLinear, builtin=True)

"""Calibration modules (what quantize() puts in the model) and deploy modules (what
convert() turns them into)."""
from lowbit.modules.calibration import CalibConv2d, CalibLinear
from lowbit.modules.deploy import DeployConv2d, DeployLinear

__all__ = ["CalibLinear", "CalibConv2d", "DeployLinear", "DeployConv2d"]

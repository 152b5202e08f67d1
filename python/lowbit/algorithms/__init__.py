"""Calibration rules of the data-driven algorithms. The numerical work is in C++
(csrc/algorithms/); the Python side of an algorithm only collects statistics and calls it.

Which algorithms exist, the layer types each handles and their parameters are rows of
the C++ algorithm table (csrc/config/algorithm_table.cpp, ``_C.algorithm_table()``). A
row marked ``python_module`` has its rule in ``lowbit/algorithms/<name>.py`` as one class
(that module's ``CALIBRATION``), written against the calibration layer's interface
(``input_rows``, ``weight_shape``, ``layer_type``, ...) rather than for Linear or Conv2d;
this package builds one module class per layer type of the row from it (``GPTQLinear``,
``GPTQConv2d``) and registers every row. The rows without a module (minmax, cast,
quantile, mxquant) run on the base calibration modules, whose rules they select."""
import importlib

from lowbit import _C, registry
from lowbit.modules import CalibConv2d, CalibLinear, DeployConv2d, DeployLinear

BASE_MODULES = {"Linear": CalibLinear, "Conv2d": CalibConv2d}
DEPLOY_MODULES = {"Linear": DeployLinear, "Conv2d": DeployConv2d}
CALIBRATION_MODULES = {}  # name -> {layer type -> calibration module class}, for rows with a module


def _layer_classes(row):
    """{layer type: calibration module class} of one table row."""
    if not row["python_module"]:
        return {t: BASE_MODULES[t] for t in row["layer_types"]}
    module = importlib.import_module(f"{__name__}.{row['name']}")
    rule = getattr(module, "CALIBRATION", None)
    if not isinstance(rule, type):
        raise ImportError(f"{module.__name__}: the algorithm table marks '{row['name']}' as a Python module, "
                          f"but the module defines no CALIBRATION class")
    classes = {}
    for t in row["layer_types"]:
        cls = type(f"{rule.__name__}{t}", (rule, BASE_MODULES[t]), {"__module__": module.__name__})
        setattr(module, cls.__name__, cls)  # importable by name, like a written class
        classes[t] = cls
    CALIBRATION_MODULES[row["name"]] = classes
    return classes


for _row in _C.algorithm_table():
    for _type, _calib in _layer_classes(_row).items():
        registry.register(_row["name"], registry.SOURCE_TYPES[_type], _calib, DEPLOY_MODULES[_type], builtin=True)

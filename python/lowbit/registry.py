"""Which modules implement an algorithm for a layer type (AMCT's algorithm_register)."""
from torch import nn

from lowbit import _C

# (algorithm, source layer type) -> (calibration module class, deploy module class);
# lowbit.algorithms registers the built-in rows of the C++ algorithm table
_REGISTRY = {}
BUILTIN = tuple(row["name"] for row in _C.algorithm_table())
_CUSTOM = {}  # name -> layer type names
SOURCE_TYPES = {"Linear": nn.Linear, "Conv2d": nn.Conv2d}  # src_op given by name (also 'torch.nn.Linear')


def register(name, src_op, quant_op, deploy_op=None, builtin=False):
    if not isinstance(name, str) or not name:
        raise TypeError(f"algorithm_register: name must be a non-empty str, got {name!r}")
    if isinstance(src_op, str):  # AMCT documents the class name: 'Linear', 'Conv2d'
        if src_op.rpartition(".")[2] not in SOURCE_TYPES:
            raise ValueError(f"algorithm_register: src_op {src_op!r} is not allowed; allowed names: "
                             f"{', '.join(SOURCE_TYPES)} (or an nn.Module class)")
        src_op = SOURCE_TYPES[src_op.rpartition(".")[2]]
    if not (isinstance(src_op, type) and issubclass(src_op, nn.Module)):
        raise TypeError(f"algorithm_register: src_op must be an nn.Module class or one of the names "
                        f"{', '.join(SOURCE_TYPES)}, got {src_op!r}")
    if not callable(quant_op):
        raise TypeError(f"algorithm_register: quant_op must be callable (a module class), got {quant_op!r}")
    if deploy_op is not None and not callable(deploy_op):
        raise TypeError(f"algorithm_register: deploy_op must be callable or None, got {deploy_op!r}")
    if not builtin and name in BUILTIN:
        raise ValueError(f"algorithm_register: {name!r} is a built-in algorithm; choose another name")
    _REGISTRY[(name, src_op)] = (quant_op, deploy_op)
    if not builtin:
        _CUSTOM.setdefault(name, [])
        if src_op.__name__ not in _CUSTOM[name]:
            _CUSTOM[name].append(src_op.__name__)


def lookup(name, module):
    """(quant_op, deploy_op) for the most specific registered type the module is an instance of."""
    for cls in type(module).__mro__:
        if (name, cls) in _REGISTRY:
            return _REGISTRY[(name, cls)]
    return None


def custom_algorithms():
    return [(k, list(v)) for k, v in _CUSTOM.items()]

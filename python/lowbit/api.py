"""The public verbs: quantize, calibrate, convert, summary, algorithm_register (AMCT's interface)."""
import fnmatch
import logging
from dataclasses import dataclass

import torch
from torch import nn

from lowbit import _C, batchnorm_fold, registry
from lowbit.configs import builtin_config
from lowbit.memory import release_freed_memory
from lowbit.modules.calibration import CalibLayer
from lowbit.modules.deploy import DeployLayer

log = logging.getLogger("lowbit")
TARGETS = ("generic", "ascend")


@dataclass
class LayerPlan:
    name: str
    module: nn.Module
    layer_cfg: dict = None
    skip_reason: str = None


def _layer_type(module):
    return "Conv2d" if isinstance(module, nn.Conv2d) else "Linear"


def _first_match(overrides, name, key):
    for o in overrides:
        if fnmatch.fnmatchcase(name, o["glob"]):
            if key == "weights" and o["weights"] is not None:
                return True, o["weights"]
            if key == "inputs" and o["has_inputs"]:
                return True, o["inputs"]
    return False, None


def _layer_facts(module):
    """What the capability table's layer rules look at (the arguments of _C.layer_skip_reason)."""
    conv = isinstance(module, nn.Conv2d)
    return dict(conv=conv, dtype=str(module.weight.dtype).replace("torch.", ""), k=module.weight[0].numel(),
                n=module.weight.shape[0], bias=module.bias is not None,
                padding_mode=module.padding_mode if conv else "zeros")


def _plan(model, cfg, target):
    custom = registry.custom_algorithms()
    algorithms = cfg["algorithm"]
    plans = []
    mha_out = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or isinstance(module, (CalibLayer, DeployLayer)):
            continue
        plan = LayerPlan(name, module)
        plans.append(plan)
        hit = [s for s in cfg["skip_layers"] if s in name]
        if hit:
            plan.skip_reason = f"skip_layers: {hit[0]!r}"
            continue
        if id(module) in mha_out:
            plan.skip_reason = "out_proj of nn.MultiheadAttention is used functionally by its parent"
            continue
        has_w, w = _first_match(cfg["overrides"], name, "weights")
        w = w if has_w else cfg["weights"]
        if w is None:  # the config has per-layer entries only
            plan.skip_reason = "no '<glob>.weights' entry of quant_cfg matches the layer (quant_cfg has no global weights)"
            continue
        has_in, inputs = _first_match(cfg["overrides"], name, "inputs")
        inputs = inputs if has_in else cfg["inputs"]
        ltype = _layer_type(module)
        _C.check_layer(f"layer '{name}': ", w, inputs, algorithms, custom)
        names = [a for a in algorithms if ltype in _C.algorithm_layer_types(a, custom)]
        if not names:
            plan.skip_reason = f"no configured algorithm handles nn.{ltype} ({', '.join(algorithms)})"
            continue
        algorithm = names[0]
        reason = _C.layer_skip_reason(**_layer_facts(module), weights=w, inputs=inputs, algorithm=algorithm,
                                      target=target, custom_algorithms=custom)
        if reason:
            plan.skip_reason = reason
            continue
        ops = registry.lookup(algorithm, module)
        if ops is None:
            plan.skip_reason = f"no module registered for algorithm '{algorithm}' and nn.{ltype}"
            continue
        plan.layer_cfg = {"weights": w, "inputs": inputs, "algorithm": algorithm,
                          "params": algorithms[algorithm], "batch_num": cfg["batch_num"], "ops": ops}
        if cfg["bias_correction"]:  # (not saved: the corrected bias is)
            plan.layer_cfg["bias_correction"] = True
    return plans


def _replace(model, name, new):
    if name == "":  # the root itself: turn the object into the new module in place
        model.__class__ = new.__class__
        model.__dict__ = new.__dict__
        return
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _merge_skipped(earlier, plans):
    """The skip record after another quantize() call: the earlier calls' entries of layers
    still left in float (their reasons first, then this call's when it differs), plus this
    call's own skips; a layer this call quantized drops out. Every float Linear/Conv2d is in
    ``plans``, so an earlier entry of a layer that is not (quantized, or gone) is dropped."""
    merged = {}
    for p in plans:
        if not p.skip_reason:
            continue
        old = earlier.get(p.name)
        if old is None or p.skip_reason in old.split("; "):
            merged[p.name] = old or p.skip_reason
        else:
            merged[p.name] = f"{old}; {p.skip_reason}"
    return merged


def quantize(model, config=None, target="generic", sequential=False):
    """Replaces the model's Linear/Conv2d layers (subclasses too) with calibration
    modules, in place, and returns the model.

    ``config`` is a dict as in AMCT (``None``: ``INT8_MINMAX_WEIGHT_QUANT_CFG``). Every
    check runs before the model is touched: on any error it is exactly as it was.
    ``target="ascend"`` also applies Ascend's dtype and shape limits (layers outside them
    are left in float, with the reason in ``lowbit.summary``). ``sequential=True``
    calibrates block by block so later layers see quantized inputs (lowbit.sequential).
    Calling it again on the same model quantizes the layers still in float; the skip
    record that ``lowbit.summary`` shows keeps the earlier calls' skips of layers left in
    float.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if config is None:
        config = builtin_config("INT8_MINMAX_WEIGHT_QUANT_CFG")
    if not isinstance(config, dict):
        raise TypeError(f"config: expected a dict, got {type(config).__name__}")
    if not isinstance(sequential, bool):
        raise TypeError(f"sequential: expected True or False, got {type(sequential).__name__}")
    if target not in TARGETS:
        raise ValueError(f"target: {target!r} is not allowed; allowed: {', '.join(TARGETS)}")
    cfg = _C.parse_config(config, registry.custom_algorithms())
    for name, params in cfg["algorithm"].items():  # custom algorithms keep their own parameters
        if name not in registry.BUILTIN and isinstance(config.get("algorithm"), dict):
            cfg["algorithm"][name] = dict(config["algorithm"].get(name) or {})
    plans = _plan(model, cfg, target)
    todo = [p for p in plans if p.layer_cfg is not None]
    if not todo:
        reasons = sorted({p.skip_reason for p in plans})
        why = "the model has no nn.Linear or nn.Conv2d layer" if not plans else "; ".join(reasons)
        raise ValueError(f"quantize: no layer would be quantized ({why})")
    built = []
    for p in todo:  # build everything first: errors leave the model untouched
        quant_op = p.layer_cfg["ops"][0]
        built.append((p, quant_op(p.module, p.name, p.layer_cfg)))
    for p, new in built:
        _replace(model, p.name, new)
    custom = {p.name: (p.layer_cfg["algorithm"], type(new), p.layer_cfg["ops"][1]) for p, new in built
              if not isinstance(new, CalibLayer)}
    if custom:  # a custom algorithm's own module class: convert() calls its deploy_op
        model._lowbit_custom = {**(getattr(model, "_lowbit_custom", None) or {}), **custom}
    skipped = {p.name: p.skip_reason for p in plans if p.skip_reason}
    model._lowbit_skipped = _merge_skipped(getattr(model, "_lowbit_skipped", None) or {}, plans)
    calibrating = [m for _, m in built if getattr(m, "needs_calibration", False)]
    if calibrating:
        progress = CalibrationProgress(len(calibrating))
        for m in calibrating:
            m.progress = progress
    if sequential and any(m.needs_calibration for _, m in built):
        from lowbit.sequential import SequentialCalibrator
        model._lowbit_sequential = SequentialCalibrator(model, cfg["batch_num"])
    log.info("lowbit.quantize: %d layers quantized, %d skipped", len(built), len(skipped))
    for name, reason in skipped.items():
        log.info("lowbit.quantize: skipped %r: %s", name, reason)
    return model


def calibrate(model, batches):
    """Runs a quantize()d model's calibration on ``batches`` (what the user's loop of
    ``batch_num`` calls would pass), under torch.no_grad(); returns the model.

    Each batch is a tensor (one positional argument), a tuple or list (positional
    arguments) or a dict (keyword arguments). Exactly the batches still missing are
    needed (``batch_num`` for a fresh model). With ``sequential=True`` the batches are
    recorded without running the model: the float outputs that the user's own loop gets
    back from its first batch_num - 1 calls (one full forward pass each) are not computed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batches, (torch.Tensor, dict)) or not hasattr(batches, "__iter__"):
        raise TypeError(f"batches: expected a list of batches, got {type(batches).__name__}")
    batches = list(batches)
    calib = [m for _, m in _calib_modules(model) if m.needs_calibration]
    if not calib:
        raise ValueError("calibrate: the model holds no layer that needs calibration; call lowbit.quantize first")
    seq = getattr(model, "_lowbit_sequential", None)
    batch_num = calib[0].batch_num
    remaining = seq.remaining if seq is not None else max(m.batch_num - int(m.calib_calls) for m in calib)
    if remaining == 0:
        raise ValueError("calibrate: calibration is already finished")
    if len(batches) != remaining:
        raise ValueError(f"calibrate: got {len(batches)} batches, but {remaining} are needed (batch_num is "
                         f"{batch_num}, {batch_num - remaining} already run)")
    calls = []
    for i, b in enumerate(batches):
        if isinstance(b, torch.Tensor):
            calls.append(((b,), {}))
        elif isinstance(b, (tuple, list)):
            calls.append((tuple(b), {}))
        elif isinstance(b, dict):
            calls.append(((), dict(b)))
        else:
            raise TypeError(f"batches[{i}]: expected a tensor, a tuple/list of arguments or a dict of keyword "
                            f"arguments, got {type(b).__name__}")
    with torch.no_grad():
        for args, kwargs in calls:
            if seq is not None:
                seq.record(args, kwargs)
            else:
                model(*args, **kwargs)
    return model


class CalibrationProgress:
    """One progress bar per quantize() call: a step per layer that finishes calibrating,
    showing the layer's name, its relative output error and its seconds."""

    def __init__(self, total):
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc="calibrated layers", unit="layer", leave=False, disable=None)

    def layer_done(self, name, error, seconds):
        self.bar.set_postfix_str(f"{name}: error {error:.3g}, {seconds:.2f} s")
        self.bar.update(1)
        if self.bar.n >= self.bar.total:
            self.bar.close()


def _calib_modules(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, CalibLayer)]


def _custom_modules(model):
    """name -> (algorithm, quant module class, deploy_op) of the modules that a custom
    algorithm's quant_op built with its own class (not a CalibLayer), still in place."""
    recorded = getattr(model, "_lowbit_custom", None) or {}
    present = dict(model.named_modules())
    return {n: r for n, r in recorded.items() if n in present and type(present[n]) is r[1]}


COMPUTE_MODES = ("exact", "int8")


def check_compute(compute):
    if not isinstance(compute, str) or compute not in COMPUTE_MODES:
        raise ValueError(f"compute: {compute!r} is not allowed; allowed: " + ", ".join(map(repr, COMPUTE_MODES)))


def set_compute(model, compute):
    """How the converted model's deploy layers multiply.

    "exact" (the default): fp32 products with the packed weights, equal to fake
    quantization up to the fp32 summation order. "int8": weight-only INT8/INT4 Linear
    layers quantize their activations per token inside the op (symmetric INT8, absmax /
    127) and multiply in integers, as llama.cpp does in every quantized product: faster,
    at the accuracy cost of 8-bit activations. Layers the mode does not take (Conv2d,
    float or asymmetric weights, quantized activations) stay exact, each logged with its
    reason.

    Returns {"int8": [names], "exact": {name: reason}}. Not saved: after lowbit.load, call
    it again."""
    check_compute(compute)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, DeployLayer)]
    if not layers:
        raise ValueError("set_compute: the model holds no deploy layer; call lowbit.convert (or lowbit.load) first")
    reasons = {name: m.compute_int8_skip_reason() if compute == "int8" else "compute='exact'" for name, m in layers}
    for name, m in layers:
        m.compute_int8 = not reasons[name]
    taken = [name for name, _ in layers if not reasons[name]]
    if compute == "int8":
        log.info("lowbit.set_compute: 8-bit compute in %d of %d deploy layers", len(taken), len(layers))
        for name, _ in layers:
            if reasons[name]:
                log.info("lowbit.set_compute: %r stays exact: %s", name, reasons[name])
    return {"int8": taken, "exact": {name: r for name, r in reasons.items() if r}}


def convert(model, fold_batchnorm=True, compute="exact"):
    """Turns every calibration module into its deploy module (packed low-bit weights),
    in place; returns the model. A layer that has not finished calibration is an error
    naming it, raised before anything changes.

    fold_batchnorm: a BatchNorm2d that only reads a converted Conv2d's output becomes part
    of that convolution (per-channel multiplier and bias; see lowbit.batchnorm_fold) and is
    replaced by nn.Identity, which saves its pass over the activations. The quantized codes
    are unchanged; the output changes by fp32 rounding only. Needs a model torch.fx can
    trace (otherwise the BatchNorms stay, logged).

    compute: "exact" (default) or "int8", the opt-in 8-bit compute mode of weight-only
    INT8/INT4 Linear layers (see set_compute)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(fold_batchnorm, bool):
        raise TypeError(f"fold_batchnorm: expected True or False, got {fold_batchnorm!r}")
    check_compute(compute)
    calib = _calib_modules(model)
    custom = _custom_modules(model)
    if not calib and not custom:
        raise ValueError("convert: the model holds no calibration module; call lowbit.quantize first")
    pending = [f"'{m.layer_name}' ({int(m.calib_calls)} of {m.batch_num} batches)" for _, m in calib if not m.calibrated]
    if pending:
        raise ValueError(f"convert: calibration is not finished for {len(pending)} layer(s): " + ", ".join(pending))
    no_deploy = [(name, m.algorithm) for name, m in calib if m.layer_cfg["ops"][1] is None]
    no_deploy += [(name, r[0]) for name, r in custom.items() if r[2] is None]
    if no_deploy:
        name, algorithm = no_deploy[0]
        raise ValueError(f"convert: algorithm '{algorithm}' registered no deploy_op for layer '{name}'")
    skipped = getattr(model, "_lowbit_skipped", {})
    # one layer at a time: its float weight is released (unless the caller holds it) before
    # the next one is packed, so memory peaks at the float model plus one packed layer
    count = len(calib)
    while calib:
        name, m = calib.pop(0)
        _replace(model, name, m.layer_cfg["ops"][1](m))
        del m
    for name, (_, _, deploy_op) in custom.items():  # deploy_op(quant_module), whatever its class
        _replace(model, name, deploy_op(model.get_submodule(name) if name else model))
        count += 1
    model._lowbit_custom = {}
    model._lowbit_skipped = skipped
    if fold_batchnorm:
        batchnorm_fold.fold_batchnorm(model)
    release_freed_memory()  # the float weights' freed pages: RSS reflects the converted model
    log.info("lowbit.convert: %d layers converted to deploy modules", count)
    if compute != "exact":
        set_compute(model, compute)
    return model


@dataclass
class SummaryRow:
    name: str
    type: str
    shape: tuple
    weights: str
    inputs: str
    algorithm: str
    status: str
    reason: str = ""
    error: float = float("nan")  # relative output MSE on the last calibration batch

    def __str__(self):
        err = "-" if self.error != self.error else f"{self.error:.3g}"
        return (f"{self.name or '<root>':<28} {self.type:<13} {str(list(self.shape)):<18} {self.weights:<22} "
                f"{self.inputs:<22} {self.algorithm:<11} {self.status:<11} {err:>9}  {self.reason}")


class Summary(list):
    def __str__(self):
        head = (f"{'name':<28} {'type':<13} {'shape':<18} {'weights':<22} {'inputs':<22} {'algorithm':<11} "
                f"{'status':<11} {'error':>9}  reason")
        return "\n".join([head] + [str(r) for r in self])


def model_bytes(model):
    """Bytes of every distinct tensor storage the model's parameters and buffers use (a
    converted model: packed weights, scales, and the layers left in float)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = t.storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.storage().nbytes()
    return total


def summary(model):
    """Per-layer table (a list of SummaryRow; str() renders it): name, type, shape,
    weight/input formats, algorithm, status (calibrating, calibrated, deployed, skipped)
    and the reason a layer was skipped."""
    rows = Summary()
    skipped = getattr(model, "_lowbit_skipped", {})
    custom = _custom_modules(model)
    for name, m in model.named_modules():
        if isinstance(m, (CalibLayer, DeployLayer)):
            if isinstance(m, DeployLayer):
                status = "deployed"
            else:
                status = "calibrated" if m.calibrated else f"calibrating {int(m.calib_calls)}/{m.batch_num}"
            rows.append(SummaryRow(name, type(m).__name__, m.weight_shape, m.wspec.label(),
                                   m.aspec.label() if m.aspec else "-", m.algorithm, status,
                                   error=float(m.recon_error)))
        elif name in custom:
            algorithm, _, _ = custom[name]
            rows.append(SummaryRow(name, type(m).__name__, tuple(getattr(m, "weight", torch.empty(0)).shape), "-", "-",
                                   algorithm, "custom"))
        elif name in skipped:
            rows.append(SummaryRow(name, type(m).__name__, tuple(m.weight.shape), "-", "-", "-", "skipped",
                                   skipped[name]))
    return rows


def algorithm_register(name, src_op, quant_op, deploy_op=None):
    """Registers a custom algorithm: ``quant_op(ori_module, layer_name, layer_cfg)`` builds
    the calibration module for layers of type ``src_op`` (subclasses too);
    ``deploy_op(quant_module)`` builds its deploy module at convert time."""
    registry.register(name, src_op, quant_op, deploy_op)

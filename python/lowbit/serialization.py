"""lowbit.save / lowbit.load: a converted model as safetensors (packed weights, scales,
every other tensor of its state_dict) plus per-layer quantization metadata, written and
read by the C++ safetensors code."""
import json
import logging
import os

import torch
from torch import nn

from lowbit import _C, registry
from lowbit.modules.calibration import CalibLayer
from lowbit.modules.deploy import DeployLayer

log = logging.getLogger("lowbit")

TENSORS_FILE = "model.safetensors"
META_FILE = "lowbit.json"
CHECKSUM_KEY = "lowbit.checksum"
_DTYPES = {"torch.float32": torch.float32, "torch.float16": torch.float16, "torch.bfloat16": torch.bfloat16}


class FormatError(ValueError):
    """A saved model that lowbit.load refuses: damaged, truncated, not written by lowbit, or
    holding settings or values that lowbit would never write. The message names the file
    and the field."""


def _paths(path):
    path = os.fspath(path)
    return os.path.join(path, TENSORS_FILE), os.path.join(path, META_FILE)


def _custom_args():
    custom = registry.custom_algorithms()
    return [n for n, _ in custom], [",".join(t) for _, t in custom]


def _validate(meta_text, names, tensors):
    """lowbit's metadata against the tensors, by the C++ validator (serialization/saved_model.cpp)."""
    torch.ops.lowbit.validate_saved_model(meta_text, names, tensors, *_custom_args())


def deploy_layers(model):
    """{name: deploy module}; ValueError when there is none or calibration modules remain."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, DeployLayer)}
    if not layers:
        raise ValueError("save: the model holds no deploy module; run lowbit.quantize, calibrate and lowbit.convert first")
    if any(isinstance(m, CalibLayer) for m in model.modules()):
        raise ValueError("save: the model still holds calibration modules; call lowbit.convert first")
    return layers


def metadata(model):
    """lowbit's per-layer metadata of a converted model (what saved files carry)."""
    meta = {"format": "lowbit-1", "layers": {}, "skipped": dict(getattr(model, "_lowbit_skipped", {}))}
    for name, m in deploy_layers(model).items():
        cfg = {k: v for k, v in m.layer_cfg.items() if k not in ("ops", "bias_correction")}
        meta["layers"][name] = {"config": cfg, "module": type(m).__name__, "weight_shape": list(m.weight_shape),
                                "weight_dtype": str(m.weight_dtype)}
        if getattr(m, "folded_batchnorm", None):
            meta["layers"][name]["folded_batchnorm"] = m.folded_batchnorm
    return meta


def save(model, path):
    """Writes ``path/model.safetensors`` (tensors, lowbit's metadata and a CRC-32C checksum
    of both) and ``path/lowbit.json`` (a readable copy of the metadata; lowbit.load never
    reads it). The folder is created. Each file is written to a temporary file in the same
    folder, flushed to disk and renamed over the old one: a crash, a kill or a full disk
    at any moment leaves the previous model loadable. The metadata is checked as
    lowbit.load checks it before anything is written."""
    meta = metadata(model)
    sd = model.state_dict()
    names, tensors = list(sd), [t.detach() for t in sd.values()]
    text = json.dumps(meta, indent=1, sort_keys=True)
    try:
        _validate(text, names, tensors)
    except ValueError as e:
        raise ValueError(f"save: the model cannot be saved as it is: {e}") from None
    os.makedirs(os.fspath(path), exist_ok=True)
    tensor_path, meta_path = _paths(path)
    checksum = torch.ops.lowbit.save_safetensors(tensor_path, names, tensors, ["lowbit"], [text], True)
    # the readable copy, tagged with the tensors file's checksum (a copy left over from an
    # earlier save after a crash between the two renames shows another checksum)
    copy = dict(meta, checksum=checksum)
    _C.write_file_atomic(meta_path, (json.dumps(copy, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def load(model, path):
    """Loads a saved quantized model into ``model``, a freshly built float model of the
    same architecture, in place; returns it. Everything is checked before the model
    changes. A damaged or foreign file (bad checksum, a header or data section that does
    not add up, metadata lowbit would never write, non-finite or out-of-range scales,
    NaN weight codes) raises ``lowbit.FormatError`` (a ValueError) naming the file and
    the field; a layer that is missing in the model, of another type or shape raises a
    ValueError naming it. ``lowbit.json`` is not read."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if any(isinstance(m, (CalibLayer, DeployLayer)) for m in model.modules()):
        raise ValueError("load: the model is already quantized; pass a freshly built float model")
    tensor_path, _ = _paths(path)
    try:
        names, tensors, keys, values = torch.ops.lowbit.load_safetensors(tensor_path)
    except ValueError as e:
        raise FormatError(f"load: {tensor_path}: {e}") from None
    metadata = dict(zip(keys, values))
    if "lowbit" not in metadata:
        raise FormatError(f"load: {tensor_path} has no lowbit metadata (not written by lowbit.save)")
    if CHECKSUM_KEY not in metadata:
        log.warning("lowbit.load: %s carries no checksum (written by an older lowbit): its data is not verified",
                    tensor_path)
    try:
        _validate(metadata["lowbit"], names, tensors)
    except ValueError as e:
        raise FormatError(f"load: {tensor_path}: {e}") from None
    meta = json.loads(metadata["lowbit"])
    from lowbit.api import _replace  # noqa: PLC0415  (api imports this module's users)
    built, folded = [], []
    for name, info in meta["layers"].items():
        try:
            ori = model.get_submodule(name) if name else model
        except AttributeError:
            raise ValueError(f"load: layer '{name}' of the file does not exist in the model") from None
        if not isinstance(ori, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"load: layer '{name}' is {type(ori).__name__} in the model, not Linear/Conv2d")
        if list(ori.weight.shape) != info["weight_shape"]:
            raise ValueError(f"load: layer '{name}' has weight shape {list(ori.weight.shape)} in the model, "
                             f"{info['weight_shape']} in the file")
        cfg = dict(info["config"])
        ops = registry.lookup(cfg["algorithm"], ori)
        if ops is None or ops[1] is None:
            raise ValueError(f"load: no modules registered for algorithm '{cfg['algorithm']}' (layer '{name}')")
        cfg["ops"] = ops
        calib = ops[0](ori, name, cfg)
        calib.calib_calls.fill_(calib.batch_num)  # the stored tensors replace what calibration computed
        deploy = ops[1](calib)
        if _DTYPES[info["weight_dtype"]] != ori.weight.dtype:
            raise ValueError(f"load: layer '{name}' has weight dtype {ori.weight.dtype} in the model, "
                             f"{info['weight_dtype']} in the file")
        if type(deploy).__name__ != info["module"]:
            raise FormatError(f"load: {tensor_path}: layers['{name}'].module: '{info['module']}', but algorithm "
                              f"'{cfg['algorithm']}' builds {type(deploy).__name__}")
        deploy.weight_dtype = _DTYPES[info["weight_dtype"]]
        if deploy.bias is None and (f"{name}.bias" if name else "bias") in names:
            # bias_correction gave this bias-free layer a bias; its values come from the file
            deploy.register_buffer("bias", torch.zeros(info["weight_shape"][0], dtype=deploy.weight_dtype))
        deploy._build_op_args()
        bn_name = info.get("folded_batchnorm")
        if bn_name:  # the folded layer's buffers (multiplier, bias), filled from the file below
            try:
                bn = model.get_submodule(bn_name)
            except AttributeError:
                bn = None
            if not isinstance(bn, nn.BatchNorm2d):
                raise ValueError(f"load: layer '{name}' holds the folded BatchNorm '{bn_name}', which is "
                                 f"{type(bn).__name__ if bn is not None else 'missing'} in the model")
            if bn.num_features != info["weight_shape"][0]:
                raise ValueError(f"load: layer '{name}' holds the folded BatchNorm '{bn_name}', which has "
                                 f"{bn.num_features} channels in the model for the layer's {info['weight_shape'][0]}")
            deploy.fold_output_affine(torch.ones(bn.num_features), torch.zeros(bn.num_features))
            deploy.folded_batchnorm = bn_name
            folded.append(bn_name)
        built.append((name, deploy))
    expected = {}
    replaced = {n for n, _ in built} | set(folded)
    for k, v in model.state_dict().items():
        owner = k.rpartition(".")[0]
        if not any(owner == n or owner.startswith(n + ".") if n else True for n in replaced):
            expected[k] = v
    for n, d in built:
        for k, v in d.state_dict().items():
            expected[f"{n}.{k}" if n else k] = v
    stored = dict(zip(names, tensors))
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or extra:
        raise ValueError(f"load: the file does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    for k, v in expected.items():
        if tuple(stored[k].shape) != tuple(v.shape) or stored[k].dtype != v.dtype:
            raise ValueError(f"load: tensor '{k}' is {tuple(stored[k].shape)} {stored[k].dtype} in the file, "
                             f"{tuple(v.shape)} {v.dtype} in the model")
    for name, d in built:
        _replace(model, name, d)
    for bn_name in folded:
        _replace(model, bn_name, nn.Identity())
    model.load_state_dict(stored, strict=True)
    model._lowbit_skipped = meta.get("skipped", {})
    return model

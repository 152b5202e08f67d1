"""Quantized Hugging Face folders: ``save_pretrained`` writes a converted Llama-family model
as a checkpoint folder, ``load_pretrained`` builds the deploy model from one without
reading or allocating any float weight of the quantized layers.

Folder: ``config.json`` (the model's, plus ``quantization_config``: lowbit's per-layer
formats, a readable summary), the tokenizer files copied from the source folder, the
packed weights and every other tensor in ``model.safetensors`` or in shards
``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``. Every
safetensors file carries lowbit's metadata (the source of truth for the numerics) and a
checksum; each file is written atomically, config.json last.
"""
import copy
import json
import os
from pathlib import Path

import torch

from lowbit import _C, registry
from lowbit.checkpoints import INDEX_FILE, SINGLE_FILE, TOKENIZER_FILES, fill_meta, read_config, read_tensors
from lowbit.models.hf_llama import LlamaForCausalLM
from lowbit.modules.calibration import CalibLayer
from lowbit.modules.deploy import DeployLayer
from lowbit.serialization import _DTYPES, FormatError, _validate, metadata

DEFAULT_SHARD_BYTES = 4 << 30


def _write_json(path, obj):
    _C.write_file_atomic(str(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _tensors_to_save(model):
    """The state_dict without the tied lm_head weight (HF folders store it once)."""
    sd = model.state_dict()
    cfg = getattr(model, "config", None)
    if getattr(cfg, "tie_word_embeddings", False) and "lm_head.weight" in sd:
        del sd["lm_head.weight"]
    return {k: v.detach() for k, v in sd.items()}


def _shards(tensors, max_bytes):
    shards, cur, size = [], [], 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if cur and size + n > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += n
    if cur:
        shards.append(cur)
    return shards


def save_pretrained(model, out_dir, source_dir=None, max_shard_bytes=DEFAULT_SHARD_BYTES):
    """Writes a converted LlamaForCausalLM (lowbit.models.hf_llama) as a quantized checkpoint
    folder. ``source_dir``: the float folder whose tokenizer files are copied. Returns the
    list of files written."""
    cfg = getattr(model, "config", None)
    if not isinstance(model, LlamaForCausalLM):
        raise TypeError(f"model: expected a lowbit.models.hf_llama.LlamaForCausalLM, got {type(model).__name__}")
    if not isinstance(max_shard_bytes, int) or isinstance(max_shard_bytes, bool) or max_shard_bytes < 1024:
        raise ValueError(f"max_shard_bytes: {max_shard_bytes!r} must be an int of at least 1024")
    meta = metadata(model)
    text = json.dumps(meta, indent=1, sort_keys=True)
    tensors = _tensors_to_save(model)
    try:
        _validate(text, list(tensors), list(tensors.values()))
    except ValueError as e:
        raise ValueError(f"save_pretrained: the model cannot be saved as it is: {e}") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = _shards(tensors, max_shard_bytes)
    written = []
    if len(groups) == 1:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map = {}
    for fname, group in zip(names, groups):
        torch.ops.lowbit.save_safetensors(str(out / fname), group, [tensors[n] for n in group],
                                          ["format", "lowbit"], ["pt", text], True)
        weight_map.update({n: fname for n in group})
        written.append(fname)
    if len(groups) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        _write_json(out / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
        written.append(INDEX_FILE)
    elif (out / INDEX_FILE).exists():  # an earlier sharded save: its index would take precedence
        os.unlink(out / INDEX_FILE)
    return written + finish_folder(out, source_dir, cfg.raw, meta)


def finish_folder(out, source_dir, raw_config, meta):
    """The tokenizer files copied from ``source_dir`` (when given), then config.json with
    the quantization_config summary of ``meta``, written last: a folder that has it is
    complete. Returns the file names written."""
    written = []
    if source_dir is not None:
        for f in TOKENIZER_FILES:
            src = Path(source_dir) / f
            if src.exists():
                _C.write_file_atomic(str(Path(out) / f), src.read_bytes())
                written.append(f)
    config = dict(raw_config)
    config["quantization_config"] = {
        "quant_method": "lowbit", "format": meta["format"],
        "layers": {n: {"weights": i["config"]["weights"], "inputs": i["config"]["inputs"],
                       "algorithm": i["config"]["algorithm"]} for n, i in meta["layers"].items()},
        "skipped": meta["skipped"]}
    _write_json(Path(out) / "config.json", config)
    return written + ["config.json"]


def _merged_metadata(folder, metas):
    """One metadata text from the files' own: each file carries the layers it stores (a
    streamed folder) or all of them (save_pretrained); the union must agree."""
    merged = {"layers": {}, "skipped": {}}
    for fname, m in sorted(metas.items()):
        if "lowbit" not in m:
            raise FormatError(f"load_pretrained: {folder / fname}: no lowbit metadata")
        try:
            meta = json.loads(m["lowbit"])
        except ValueError as e:
            raise FormatError(f"load_pretrained: {folder / fname}: metadata: not valid JSON ({e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("layers"), dict) \
                or not isinstance(meta.get("skipped", {}), dict):
            raise FormatError(f"load_pretrained: {folder / fname}: metadata: expected an object with 'layers'")
        merged.setdefault("format", meta.get("format"))
        if meta.get("format") != merged["format"]:
            raise FormatError(f"load_pretrained: {folder / fname}: metadata format {meta.get('format')!r} differs "
                              f"from the other files' {merged['format']!r}")
        for name, info in meta["layers"].items():
            if merged["layers"].setdefault(name, info) != info:
                raise FormatError(f"load_pretrained: {folder / fname}: layers['{name}'] differs from another file's")
        merged["skipped"].update(meta.get("skipped", {}))
    return json.dumps(merged, sort_keys=True)


def is_quantized_folder(folder):
    try:
        raw = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    q = raw.get("quantization_config") if isinstance(raw, dict) else None
    return isinstance(q, dict) and q.get("quant_method") == "lowbit"


def load_pretrained(folder, model=None):
    """The deploy model of a folder written by save_pretrained (or lowbit.quantize_streaming).
    Only the stored tensors are read (memory-mapped); the quantized layers are built from
    their packed tensors, no float weight is allocated for them. Damaged files raise
    lowbit.FormatError.

    ``model``: the architecture as a module tree, for folders of models lowbit has no class
    for (streamed with ``model=``); usually built on the meta device. It is copied, not
    changed: the copy gets the folder's tensors (tied weights stay tied; tensors the folder
    does not hold, such as non-persistent buffers, must be real) and is returned."""
    folder = Path(folder)
    if not is_quantized_folder(folder):
        raise ValueError(f"{folder}: not a lowbit-quantized folder (config.json has no quantization_config with "
                         f"quant_method 'lowbit'); load a float folder with lowbit.load_hf_model")
    if model is not None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if any(isinstance(m, (CalibLayer, DeployLayer)) for m in model.modules()):
            raise ValueError("model: already quantized; pass the float model (on the meta device)")
    cfg = read_config(folder) if model is None else None
    try:
        tensors, metas = read_tensors(folder, all_metadata=True)
    except ValueError as e:
        raise FormatError(f"load_pretrained: {e}") from None
    text = _merged_metadata(folder, metas)
    try:
        _validate(text, list(tensors), list(tensors.values()))
    except ValueError as e:
        raise FormatError(f"load_pretrained: {folder}: {e}") from None
    meta = json.loads(text)
    from lowbit.api import _replace  # noqa: PLC0415
    arch = cfg.architecture if model is None else type(model).__name__
    model = LlamaForCausalLM(cfg, device="meta") if model is None else copy.deepcopy(model)
    used = set()
    for name, info in meta["layers"].items():
        try:
            ori = model.get_submodule(name)
        except AttributeError:
            raise FormatError(f"load_pretrained: {folder}: layer '{name}' does not exist in {arch}") from None
        if list(ori.weight.shape) != info["weight_shape"]:
            raise FormatError(f"load_pretrained: {folder}: layer '{name}' has weight shape {info['weight_shape']} in "
                              f"the files, {list(ori.weight.shape)} in {arch}")
        layer_cfg = dict(info["config"])
        ops = registry.lookup(layer_cfg["algorithm"], ori)
        if ops is None or ops[1] is None:
            raise ValueError(f"load_pretrained: no modules registered for algorithm '{layer_cfg['algorithm']}'")
        layer_cfg["ops"] = ops
        prefix = name + "."
        stored = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        try:
            deploy = ops[1].from_stored(ori, name, layer_cfg, _DTYPES[info["weight_dtype"]], stored)
        except ValueError as e:
            raise FormatError(f"load_pretrained: {folder}: {e}") from None
        if type(deploy).__name__ != info["module"]:
            raise FormatError(f"load_pretrained: {folder}: layers['{name}'].module is '{info['module']}', the "
                              f"algorithm builds {type(deploy).__name__}")
        used |= {prefix + k for k in stored}
        _replace(model, name, deploy)
    rest = {k: v for k, v in tensors.items() if k not in used}
    if cfg is None:
        try:
            taken = fill_meta(model, rest, lambda names: {n: rest[n] for n in names}, f"load_pretrained: {folder}",
                              replace_real=True)
        except ValueError as e:
            raise FormatError(str(e)) from None
        extra = sorted(set(rest) - taken)
        if extra:
            raise FormatError(f"load_pretrained: {folder}: tensors {extra[:5]} are not in {arch}")
        model._lowbit_skipped = meta.get("skipped", {})
        return model.eval()
    for pname, param in list(model.named_parameters()):
        if pname == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if pname not in rest:
            raise FormatError(f"load_pretrained: {folder}: tensor '{pname}' is missing")
        t = rest.pop(pname)
        if tuple(t.shape) != tuple(param.shape) or not t.is_floating_point():
            raise FormatError(f"load_pretrained: {folder}: tensor '{pname}' is {tuple(t.shape)} {t.dtype}, expected "
                              f"{tuple(param.shape)} float")
        owner, _, leaf = pname.rpartition(".")
        model.get_submodule(owner)._parameters[leaf] = torch.nn.Parameter(t, requires_grad=False)
    if cfg.tie_word_embeddings and isinstance(model.lm_head, torch.nn.Linear):
        model.lm_head.weight = model.model.embed_tokens.weight
    if rest:
        raise FormatError(f"load_pretrained: {folder}: unexpected tensors {sorted(rest)[:5]}")
    model._lowbit_skipped = meta.get("skipped", {})
    return model.eval()

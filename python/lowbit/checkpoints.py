"""Hugging Face checkpoint folders: reading their weights (one model.safetensors or shards
listed by model.safetensors.index.json) through lowbit's memory-mapped safetensors
reader, and building a Llama-family model from them (lowbit.models.hf_llama)."""
import json
import os
from pathlib import Path

import torch
from torch import nn

from lowbit.models.hf_llama import HFLlamaConfig, LlamaForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def _json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_config(folder):
    return HFLlamaConfig.from_dict(_json(Path(folder) / "config.json"))


def weight_files(folder):
    """{tensor name: file} of a checkpoint folder; checks the index against the folder."""
    folder = Path(folder)
    if (folder / INDEX_FILE).exists():
        index = _json(folder / INDEX_FILE)
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wm, dict) or not wm:
            raise ValueError(f"{folder / INDEX_FILE}: 'weight_map' must be a non-empty object")
        out = {}
        for name, shard in wm.items():
            if not isinstance(shard, str) or os.path.basename(shard) != shard:
                raise ValueError(f"{folder / INDEX_FILE}: weight_map['{name}'] = {shard!r} is not a file name in "
                                 f"the folder")
            out[name] = folder / shard
        return out
    if (folder / SINGLE_FILE).exists():
        return None  # every tensor of the one file
    raise ValueError(f"{folder}: neither {SINGLE_FILE} nor {INDEX_FILE} found")


def read_tensors(folder, all_metadata=False):
    """(tensors, metadata): every tensor of the folder's safetensors files, memory-mapped
    (no copy where the bytes are aligned), and the first file's metadata ({file: metadata}
    with all_metadata). For a sharded folder the shards must hold exactly the tensors the
    index names."""
    folder = Path(folder)
    files = weight_files(folder)
    shards = [folder / SINGLE_FILE] if files is None else sorted(set(files.values()))
    tensors, metas = {}, {}
    for shard in shards:
        names, values, keys, meta_values = torch.ops.lowbit.load_safetensors(str(shard))
        metas[shard.name] = dict(zip(keys, meta_values))
        for n, t in zip(names, values):
            if n in tensors:
                raise ValueError(f"{shard}: tensor '{n}' is also stored in another shard")
            if files is not None and files.get(n) != shard:
                raise ValueError(f"{shard}: holds tensor '{n}', which {INDEX_FILE} places in "
                                 f"{files.get(n, 'no file')}")
            tensors[n] = t
    if files is not None:
        missing = sorted(set(files) - set(tensors))
        if missing:
            raise ValueError(f"{folder}: {len(missing)} tensors of {INDEX_FILE} are in no shard, e.g. {missing[:3]}")
    return tensors, (metas if all_metadata else metas[shards[0].name])


def _assign(model, tensors, dtype, folder):
    """Puts the checkpoint's tensors into the (meta) model's parameters by name."""
    expected = dict(model.named_parameters())
    tied = model.config.tie_word_embeddings
    names = set(tensors) - ({"lm_head.weight"} if tied else set())
    missing = sorted(set(expected) - set(tensors) - ({"lm_head.weight"} if tied else set()))
    extra = sorted(n for n in names - set(expected) if not n.endswith("rotary_emb.inv_freq"))
    if missing or extra:
        raise ValueError(f"{folder}: the checkpoint does not match {model.config.architecture}: missing "
                         f"{missing[:5]}, unexpected {extra[:5]}")
    for name, param in expected.items():
        if tied and name == "lm_head.weight":
            continue
        t = tensors[name]
        if tuple(t.shape) != tuple(param.shape):
            raise ValueError(f"{folder}: tensor '{name}' has shape {tuple(t.shape)}, the config gives "
                             f"{tuple(param.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{folder}: tensor '{name}' has dtype {t.dtype}, not a float type")
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        module._parameters[leaf] = nn.Parameter(t if t.dtype == dtype else t.to(dtype), requires_grad=False)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight


def load_hf_model(folder, dtype=None):
    """A Llama / Mistral / Qwen2 checkpoint folder as a LlamaForCausalLM in eval mode.
    Weights are memory-mapped views of the files when they are already in ``dtype``
    (default: the checkpoint's torch_dtype), else converted."""
    cfg = read_config(folder)
    dtype = dtype or cfg.dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype: {dtype} is not allowed; allowed: torch.float32, torch.float16, torch.bfloat16")
    model = LlamaForCausalLM(cfg, device="meta")
    tensors, _ = read_tensors(folder)
    _assign(model, tensors, dtype, folder)
    return model.eval()


def fill_meta(module, available, load, where, prefix="", replace_real=False):
    """Real tensors for the meta parameters and buffers of ``module`` (a model built on the
    meta device): ``available`` holds the names that can be loaded (``prefix`` + the
    module's own names), ``load(names)`` returns {name: tensor}. A tensor held under
    several names (tied weights) is loaded once, under whichever name is available, and
    stays tied; tensors that are already real are kept (``replace_real``: replaced where
    available). Raises ValueError naming the first meta tensor that is missing or a shape
    that differs. Returns the names loaded."""
    groups = {}
    for mname, m in module.named_modules(remove_duplicate=False):
        for kind in ("_parameters", "_buffers"):
            for leaf, t in getattr(m, kind).items():
                if t is not None and (t.is_meta or replace_real):
                    full = prefix + (f"{mname}.{leaf}" if mname else leaf)
                    groups.setdefault(id(t), (t, kind, []))[2].append((m, leaf, full))
    chosen = {}
    for key, (_, _, owners) in groups.items():
        name = next((n for _, _, n in owners if n in available), None)
        if name is None and not groups[key][0].is_meta:
            continue  # (replace_real: a real tensor the folder does not hold)
        if name is None:
            also = f" (nor under its tied names {[n for _, _, n in owners[1:]]})" if len(owners) > 1 else ""
            raise ValueError(f"{where}: tensor '{owners[0][2]}' is on the meta device and not in the folder{also}")
        chosen[key] = name
    loaded = load(sorted(set(chosen.values())))
    for key, name in chosen.items():
        t, kind, owners = groups[key]
        v = loaded[name]
        if tuple(v.shape) != tuple(t.shape):
            raise ValueError(f"{where}: tensor '{name}' has shape {tuple(v.shape)}, the model expects "
                             f"{tuple(t.shape)}")
        if kind == "_parameters":
            v = nn.Parameter(v, requires_grad=False)
        for m, leaf, _ in owners:
            getattr(m, kind)[leaf] = v
    return set(loaded)

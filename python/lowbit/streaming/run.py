"""Streaming calibration: a Hugging Face Llama-family folder quantized block by block with
only the calibration activations and ONE decoder layer in memory, for models larger than
RAM. Same numerics as ``quantize(model, cfg, sequential=True)`` on the whole model: each
decoder layer calibrates on the outputs of the already-quantized layers before it (its
fake-quantized outputs become the next layer's inputs), then lm_head on the final norm's
output; the result is bit-identical (tests compare the packed tensors).

For each layer: its weights are read from the checkpoint (memory-mapped, converted to the
compute dtype), the calibration activations run through it (statistics, then the solve
at the last batch), then through the calibrated layer to give the next inputs; the packed
layer is written to its own shard of the output folder and everything is freed. Blocks of
1 MiB or more get their own mappings from then on (glibc's malloc would otherwise keep
freed layers in its heap), so the process's RSS follows what is live.

Resumable: after each layer the activations (fp32, exact; one file per process and
layer) and then the progress are written atomically to ``OUT/.lowbit-stream/``;
``resume=True`` continues after the last finished layer and gives the same result as an
uninterrupted run. The folder's config.json is written last and removed when a run
starts, so an unfinished folder never looks complete.

Several processes (torch.distributed initialised, e.g. by torchrun) share the work:
lowbit.distributed describes what is split and what is reduced.
"""
import hashlib
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lowbit import _C
from lowbit.checkpoints import INDEX_FILE, read_config, weight_files
from lowbit.models.hf_llama import DecoderLayer, LlamaForCausalLM, RMSNorm
from lowbit.modules.calibration import CalibLayer

WORK_DIR = ".lowbit-stream"


class _Reader:
    """Tensors of a checkpoint folder by name, mapping only the shards that hold them."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.files = weight_files(folder)  # None: one model.safetensors

    def get(self, names, dtype):
        shards = {}
        for n in names:
            f = self.folder / "model.safetensors" if self.files is None else self.files.get(n)
            if f is None:
                raise ValueError(f"{self.folder}: tensor '{n}' is not in {INDEX_FILE}")
            shards.setdefault(f, []).append(n)
        out = {}
        for f, wanted in shards.items():
            got = dict(zip(*torch.ops.lowbit.load_safetensors(str(f))[:2]))
            for n in wanted:
                if n not in got:
                    raise ValueError(f"{f}: tensor '{n}' is missing")
                t = got[n]
                out[n] = t.to(dtype) if t.dtype != dtype else t.clone()  # no view keeps the shard mapped
        return out


def _fill(module, prefix, tensors):
    """Real parameters for a module built on the meta device."""
    for pname, param in list(module.named_parameters()):
        t = tensors[prefix + pname]
        if tuple(t.shape) != tuple(param.shape):
            raise ValueError(f"tensor '{prefix + pname}' has shape {tuple(t.shape)}, the config gives "
                             f"{tuple(param.shape)}")
        owner, _, leaf = pname.rpartition(".")
        (module.get_submodule(owner) if owner else module)._parameters[leaf] = nn.Parameter(t, requires_grad=False)


def _holder(path, module):
    """A module tree in which only ``path`` exists, so that its layers carry the full
    model's names (config globs and skip_layers match as on the whole model)."""
    root = node = nn.ModuleDict()
    parts = path.split(".")
    for p in parts[:-1]:
        node[p] = nn.ModuleDict()
        node = node[p]
    node[parts[-1]] = module
    return root


def _rss_peak_bytes():
    """This process's peak RSS (VmHWM; getrusage's maxrss keeps the parent's across exec)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def estimate_peak_bytes(cfg, batches, dtype, algorithm_hessian=True):
    """Memory the streaming run needs beyond the Python process: activations (fp32, twice
    during the pass that replaces them), one layer in the compute dtype plus its
    fake-quantized copy and the algorithms' temporaries (about two fp32 copies), the
    Hessians of one layer (K x K fp32 per projection) and the two K x K factorisations
    GPTQ holds beside the widest one while it solves, the embedding matrix while the
    first activations are made."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    qkv = cfg.num_attention_heads * cfg.head_dim + 2 * cfg.num_key_value_heads * cfg.head_dim
    layer_params = h * qkv + cfg.num_attention_heads * cfg.head_dim * h + 3 * h * i
    esize = torch.empty((), dtype=dtype).element_size()
    tokens = sum(b.shape[1] for b in batches)
    acts = 2 * tokens * h * 4
    att = max(b.shape[1] for b in batches) ** 2 * cfg.num_attention_heads * 4 * 2
    widest = max(h, i, cfg.num_attention_heads * cfg.head_dim)
    hess = (5 * h * h + i * i + 2 * widest * widest) * 4 if algorithm_hessian else 0
    embed = cfg.vocab_size * h * esize
    return acts + att + layer_params * (esize + 8) + hess + max(embed, layer_params * 4)


def layer_flops(cfg, batches, algorithm):
    """Multiply-add FLOPs of one decoder layer's streaming step: two passes over the
    calibration tokens (statistics, then the next inputs; attention included) and, for the
    Hessian-based algorithms (gptq, awq, ofmr), X^T X of every projection's input."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    qd, kvd = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    params = h * (qd + 2 * kvd) + qd * h + 3 * h * i
    tokens = sum(b.shape[1] for b in batches)
    attn = sum(4 * b.shape[1] ** 2 * qd for b in batches)
    forward = 2 * (2 * tokens * params + attn)
    hessian = 2 * tokens * (4 * h * h + qd * qd + 2 * h * h + i * i) if algorithm in ("gptq", "awq", "ofmr") else 0
    return forward + hessian


def measured_gflops(dtype=torch.float32):
    """This machine's matmul rate now (median of 5 products of 512 x 2048 x 2048)."""
    a, b = torch.randn(512, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 512 * 2048 * 2048 / sorted(times)[2] / 1e9


def _fingerprint(model_dir, cfg_dict, batches, dtype):
    h = hashlib.sha256()
    h.update(Path(model_dir, "config.json").read_bytes())
    h.update(json.dumps(cfg_dict, sort_keys=True, default=sorted).encode())
    h.update(str(dtype).encode())
    for b in batches:
        h.update(b.numpy().tobytes())
    return h.hexdigest()


def _write_json(path, obj):
    _C.write_file_atomic(str(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def quantize_streaming(model_dir, config, batches, out_dir, resume=False, dtype=None, progress=True, log=None):
    """Quantizes the folder ``model_dir`` into the quantized folder ``out_dir`` (the layout of
    lowbit.save_pretrained; lowbit.load_pretrained reads it) with ``config`` (a quantize()
    config; its batch_num is set to len(batches)). ``batches``: [1, T] token tensors, the
    model inputs of each calibration sample. Returns a dict of timings and memory.

    When torch.distributed is initialised with several processes, each calls this with the
    same arguments and they share the work (lowbit.distributed: samples split, statistics
    reduced, GPTQ rows split); rank 0 writes the folder, and only it logs."""
    import lowbit
    from lowbit.distributed import Group, calibrate_block, exit_hook, local_samples
    from lowbit.serialization import metadata
    group = Group()
    if group.rank != 0:
        log, progress = (lambda msg: None), False
    log = log or (lambda msg: print(msg, file=sys.stderr))
    model_dir, out = Path(model_dir), Path(out_dir)
    cfg = read_config(model_dir)
    dtype = dtype or cfg.dtype
    if not batches:
        raise ValueError("batches: empty; streaming calibration needs at least one sample")
    config = dict(config)
    config["batch_num"] = len(batches)
    lowbit.validate_config(config)
    # freed layers go back to the system instead of glibc's heap: without this the peak of
    # a 16-layer run of 51 MB layers grew by about 170 MB (three layers) of freed blocks
    _C.fix_heap_mmap_threshold(1 << 20)
    work = out / WORK_DIR
    fp = _fingerprint(model_dir, config, batches, dtype)
    _check_same_inputs(group, fp)
    plan = local_samples(len(batches), group.world, group.rank)  # this rank's samples (global indices)
    n_layers = cfg.num_hidden_layers
    shard_names = [f"model-{k + 1:05d}-of-{n_layers + 1:05d}.safetensors" for k in range(n_layers + 1)]
    start = _open_folder(group, out, fp, resume)
    if start:
        hs = _load_activations(work, group, start, plan)
        log(f"lowbit stream: resuming {out} at layer {start} of {n_layers}")
    shell = LlamaForCausalLM(cfg, device="meta")
    reader = _Reader(model_dir)
    mine = [batches[j] for j in plan]
    need = estimate_peak_bytes(cfg, mine, dtype)
    algorithm = next(iter(lowbit.validate_config(config)["algorithm"]))
    flops = layer_flops(cfg, mine, algorithm) * (n_layers - start)
    rate = measured_gflops(dtype)
    ranks = f" on {group.world} processes (per process: {len(plan)} samples)" if group.active else ""
    log(f"lowbit stream: {cfg.architecture}, {n_layers} layers, hidden {cfg.hidden_size}, {len(batches)} samples, "
        f"{sum(b.shape[1] for b in batches)} tokens, compute {str(dtype).split('.')[1]}{ranks}; estimated peak "
        f"{need / 2**30:.2f} GiB beyond the process's {_rss_peak_bytes() / 2**30:.2f} GiB; "
        f"{flops / 1e12:.1f} TFLOP left, at least {flops / rate / 1e9 / 60:.1f} min at the measured "
        f"{rate:.0f} GFLOP/s")
    t_all = time.perf_counter()
    positions = {b.shape[1] for b in batches}
    rotary = {t: shell._rotary(0, t) for t in positions}
    if not start:
        w = reader.get(["model.embed_tokens.weight"], dtype)["model.embed_tokens.weight"]
        hs = [F.embedding(b, w).float() for b in mine]
        del w
    timings = []
    from tqdm import tqdm
    bar = tqdm(total=n_layers + 1, initial=start, desc="streaming layers", unit="layer", disable=not progress,
               leave=False)
    group.take_counters()
    for i in range(start, n_layers):
        exit_hook(group.rank, i)
        group.context = f"layer {i}"
        t0 = time.perf_counter()
        prefix = f"model.layers.{i}."
        layer = DecoderLayer(cfg, device="meta")
        names = [prefix + n for n, _ in layer.named_parameters()]
        _fill(layer, prefix, reader.get(names, dtype))
        root = _holder(f"model.layers.{i}", layer)
        t_read = time.perf_counter() - t0
        t1 = time.perf_counter()
        quantized = _quantize_block(root, config)
        with torch.no_grad():
            if quantized:
                inner = [m for m in layer.modules() if isinstance(m, CalibLayer)]
                # statistics (split over the ranks, then reduced); the last sample also solves
                t_final = calibrate_block(group, inner, lambda h: layer(h.to(dtype), *rotary[h.shape[1]], None), hs,
                                          plan[0], len(batches))
                t_stats = time.perf_counter() - t1
                for m in inner:
                    m.fake_quant_weight_cache = m.weight_fake_quant().detach()
            else:
                inner, t_stats, t_final = [], 0.0, 0.0
            t2 = time.perf_counter()
            hs = [layer(h.to(dtype), *rotary[h.shape[1]], None).float() for h in hs]
            t_fwd = time.perf_counter() - t2
        t3 = time.perf_counter()
        if group.rank == 0:
            if quantized:
                lowbit.convert(root)
                meta = metadata(root)
            else:
                meta = {"format": "lowbit-1", "layers": {}, "skipped": getattr(root, "_lowbit_skipped", {})}
            _write_shard(out / shard_names[i], root, meta)
        _checkpoint(group, work, fp, i + 1, plan, hs)
        t_write = time.perf_counter() - t3
        comm_bytes, comm_seconds = group.take_counters()
        timings.append({"layer": i, "read": t_read, "statistics_and_solve": t_stats, "last_sample_and_solve": t_final,
                        "forward": t_fwd,
                        "write": t_write, "seconds": time.perf_counter() - t0, "comm_bytes": comm_bytes,
                        "comm_seconds": comm_seconds})
        del layer, root, quantized, inner  # (inner holds the calibrated layers)
        bar.set_postfix_str(f"layer {i}: read {t_read:.1f} s, calibrate {t_stats:.1f} s, forward {t_fwd:.1f} s, "
                            f"write {t_write:.1f} s")
        bar.update(1)
        log(f"lowbit stream: layer {i} written ({time.perf_counter() - t0:.1f} s)")
    # the head: final norm, then lm_head (quantized unless the config skips it)
    exit_hook(group.rank, n_layers)
    group.context = "the head"
    t0 = time.perf_counter()
    rest_names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        rest_names.append("lm_head.weight")
    rest = reader.get(rest_names, dtype)
    norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    norm.weight = nn.Parameter(rest["model.norm.weight"], requires_grad=False)
    head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device="meta")
    head.weight = nn.Parameter(rest["lm_head.weight" if not cfg.tie_word_embeddings else "model.embed_tokens.weight"],
                               requires_grad=False)
    root = _holder("lm_head", head)
    quantized = _quantize_block(root, config)
    if quantized:
        inner = [m for m in root.modules() if isinstance(m, CalibLayer)]
        with torch.no_grad():
            calibrate_block(group, inner, lambda h: root.lm_head(norm(h.to(dtype))), hs, plan[0], len(batches))
    if group.rank == 0:
        if quantized:
            lowbit.convert(root)
        skipped = getattr(root, "_lowbit_skipped", {})
        tail = {"model.embed_tokens.weight": rest["model.embed_tokens.weight"], "model.norm.weight": norm.weight}
        for k, v in root.state_dict().items():
            if not (cfg.tie_word_embeddings and k == "lm_head.weight"):
                tail[k] = v
        head_layers = metadata(root)["layers"] if quantized else {}
        _write_tensors(out / shard_names[n_layers], tail, {"format": "lowbit-1", "layers": head_layers,
                                                           "skipped": skipped})
        _finish_folder(out, model_dir, cfg, shard_names)
    comm_bytes, comm_seconds = group.take_counters()
    timings.append({"layer": "head", "seconds": time.perf_counter() - t0, "comm_bytes": comm_bytes,
                    "comm_seconds": comm_seconds})
    bar.update(1)
    bar.close()
    _clean_up(group, work)
    return {"timings": timings, "seconds": time.perf_counter() - t_all, "peak_rss_bytes": _rss_peak_bytes(),
            "estimated_bytes": need, "flops": flops, "gflops_measured": rate, "rank": group.rank,
            "world_size": group.world}


def _check_same_inputs(group, fp):
    """Every rank must quantize the same model with the same config and samples."""
    prints = group.gather_objects(fp, "comparing the ranks' inputs")
    differ = [r for r, p in enumerate(prints) if p != prints[0]]
    if differ:
        raise ValueError(f"ranks {differ} were given another model, config, dtype or calibration samples than rank 0; "
                         f"every process must be started with the same arguments")


def _open_folder(group, out, fp, resume):
    """Rank 0 prepares the output folder and decides where to start; every rank learns it.
    Returns the first layer to run (0: from the embeddings)."""
    decision = {"start": 0, "error": None}
    if group.rank == 0:
        try:
            decision["start"] = _prepare_folder(out, fp, resume, group.world)
        except ValueError as e:
            decision["error"] = str(e)
    decision = group.broadcast_object(decision, "opening the output folder")
    if decision["error"]:
        raise ValueError(decision["error"])
    (out / WORK_DIR).mkdir(parents=True, exist_ok=True)  # (a rank on another machine writes its files there)
    return decision["start"]


def _prepare_folder(out, fp, resume, world):
    work = out / WORK_DIR
    start = 0
    if resume and (work / "state.json").exists():
        state = json.loads((work / "state.json").read_text())
        if state.get("fingerprint") != fp:
            raise ValueError(f"resume: {out} was started with another model, config, dtype or calibration data; "
                             f"remove it or quantize into another folder")
        if state.get("world_size", 1) != world:
            raise ValueError(f"resume: {out} was started by {state.get('world_size', 1)} processes; resume it with "
                             f"the same number (this run has {world})")
        start = int(state["next_layer"])
    elif work.exists() and not resume:
        raise ValueError(f"{out} holds an unfinished streaming run; pass resume=True (--resume) to continue it, "
                         f"or remove the folder")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    if (out / "config.json").exists():
        (out / "config.json").unlink()  # the folder is incomplete until the end
    return start


def _activations_file(work, group, layer):
    """This rank's saved inputs of ``layer`` (one file per rank and layer)."""
    return work / f"activations-rank{group.rank}-of-{group.world}-layer{layer}.safetensors"


def _load_activations(work, group, layer, plan):
    path = _activations_file(work, group, layer)
    if not path.exists():
        raise ValueError(f"resume: {path} is missing; every process resumes from the activations it wrote (same "
                         f"--out path, same rank on the same machine or a shared file system)")
    names, tensors = torch.ops.lowbit.load_safetensors(str(path))[:2]
    acts = dict(zip(names, tensors))
    return [acts[f"h{j}"].clone() for j in plan]


def _checkpoint(group, work, fp, next_layer, plan, hs):
    """Saves this rank's activations (the inputs of next_layer); once every rank has, rank
    0 records the progress. The inputs of the layer before are then no longer needed."""
    torch.ops.lowbit.save_safetensors(str(_activations_file(work, group, next_layer)), [f"h{j}" for j in plan], hs,
                                      [], [], True)
    group.barrier(f"saving the inputs of layer {next_layer}")
    if group.rank == 0:
        _write_json(work / "state.json", {"fingerprint": fp, "next_layer": next_layer, "world_size": group.world})
    # state.json says next_layer - 1 or next_layer from here on: older inputs are not needed
    _activations_file(work, group, next_layer - 2).unlink(missing_ok=True)


def _clean_up(group, work):
    """After config.json: every rank removes its files, then rank 0 the work folder."""
    group.barrier("finishing the folder")
    for f in work.glob(f"activations-rank{group.rank}-of-{group.world}-layer*.safetensors"):
        f.unlink(missing_ok=True)
    group.barrier("removing the work files")
    if group.rank == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        try:
            work.rmdir()  # (another machine's local folder; on a shared one rank 0 removes it)
        except OSError:
            pass


def _quantize_block(root, config):
    """quantize() on one block; False when the config quantizes none of its layers."""
    import lowbit
    try:
        lowbit.quantize(root, dict(config))
    except ValueError as e:
        if str(e).startswith("quantize: no layer would be quantized"):
            return False
        raise
    return True


def _write_tensors(path, tensors, meta):
    text = json.dumps(meta, indent=1, sort_keys=True)
    torch.ops.lowbit.save_safetensors(str(path), list(tensors), [t.detach() for t in tensors.values()],
                                      ["format", "lowbit"], ["pt", text], True)


def _write_shard(path, root, meta):
    _write_tensors(path, dict(root.state_dict()), meta)


def _finish_folder(out, model_dir, cfg, shard_names):
    """The index and config.json, from the shards themselves: each carries the metadata of
    the layers it stores (a resumed run has not seen the earlier layers)."""
    weight_map, total = {}, 0
    meta = {"format": "lowbit-1", "layers": {}, "skipped": {}}
    for name in shard_names:
        names, tensors, keys, values = torch.ops.lowbit.load_safetensors(str(out / name))
        for n, t in zip(names, tensors):
            weight_map[n] = name
            total += t.numel() * t.element_size()
        shard_meta = json.loads(dict(zip(keys, values)).get("lowbit", "{}"))
        meta["layers"].update(shard_meta.get("layers", {}))
        meta["skipped"].update(shard_meta.get("skipped", {}))
    _write_json(out / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    from lowbit.pretrained import finish_folder
    finish_folder(out, model_dir, cfg, meta)  # config.json last: the folder is complete

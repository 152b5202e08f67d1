"""The streaming loop: one block at a time, from a source (sources.py) into an output
folder (folder.py)."""
import sys
import time
from pathlib import Path

import torch

from lowbit.memory import map_large_blocks
from lowbit.streaming.budget import measured_gflops, rss_peak_bytes
from lowbit.streaming.folder import (WORK_DIR, checkpoint, clean_up, finish_folder, fingerprint, load_activations,
                                     open_folder, write_tensors)
from lowbit.streaming.sources import LlamaSource, ModuleSource, Reader, calib_layers, holder, quantize_block


def quantize_streaming(model_dir, config, batches, out_dir, resume=False, dtype=None, progress=True, log=None,
                       model=None, layers=None):
    """Quantizes the folder ``model_dir`` into the quantized folder ``out_dir`` (the layout of
    lowbit.save_pretrained; lowbit.load_pretrained reads it) with ``config`` (a quantize()
    config; its batch_num is set to len(batches)). ``batches``: [1, T] token tensors, the
    model inputs of each calibration sample. Returns a dict of timings and memory.

    ``model``: for an architecture lowbit has no class for, the model as a module tree
    (its parameters may be on the meta device, e.g. a transformers model built with
    accelerate's init_empty_weights; the folder's tensor names are its state_dict names).
    Its blocks are the nn.ModuleList named by ``layers`` (default: the one whose children
    hold the most Linear layers); the model is called as ``model(tokens)`` (with
    use_cache=False where its forward takes it) and is not changed. Read the result with
    ``lowbit.load_pretrained(out_dir, model=...)``.

    When torch.distributed is initialised with several processes, each calls this with the
    same arguments and they share the work (lowbit.distributed: samples split, statistics
    reduced, GPTQ rows split); rank 0 writes the folder, and only it logs."""
    import lowbit  # noqa: PLC0415
    from lowbit.distributed import Group, calibrate_block, exit_hook, local_samples  # noqa: PLC0415
    from lowbit.serialization import metadata  # noqa: PLC0415
    group = Group()
    if group.rank != 0:
        log, progress = (lambda msg: None), False
    log = log or (lambda msg: print(msg, file=sys.stderr))
    model_dir, out = Path(model_dir), Path(out_dir)
    if model is None and layers is not None:
        raise ValueError("layers: only used with model= (lowbit's own Llama classes know their blocks)")
    source = LlamaSource(model_dir, dtype) if model is None else ModuleSource(model, model_dir, dtype, layers)
    dtype = source.dtype
    if not batches:
        raise ValueError("batches: empty; streaming calibration needs at least one sample")
    config = dict(config)
    config["batch_num"] = len(batches)
    algorithm = next(iter(lowbit.validate_config(config)["algorithm"]))
    work = out / WORK_DIR
    fp = fingerprint(source, config, batches, dtype)
    _check_same_inputs(group, fp)
    plan = local_samples(len(batches), group.world, group.rank)  # this rank's samples (global indices)
    n_layers = source.n_layers
    shard_names = [f"model-{k + 1:05d}-of-{n_layers + 1:05d}.safetensors" for k in range(n_layers + 1)]
    start, source_state = open_folder(group, out, fp, resume)
    source.restore(source_state)
    if start:
        log(f"lowbit stream: resuming {out} at layer {start} of {n_layers}")
    reader = Reader(model_dir)
    mine = [batches[j] for j in plan]
    map_large_blocks(_mapping_threshold(source.activation_bytes(mine)))
    need = source.estimate(mine)
    flops = source.flops(mine, algorithm) * (n_layers - start)
    rate = measured_gflops(dtype)
    ranks = f" on {group.world} processes (per process: {len(plan)} samples)" if group.active else ""
    log(f"lowbit stream: {source.describe()}, {len(batches)} samples, {sum(b.shape[1] for b in batches)} tokens, "
        f"compute {str(dtype).split('.')[1]}{ranks}; estimated peak {need / 2**30:.2f} GiB beyond the process's "
        f"{rss_peak_bytes() / 2**30:.2f} GiB; {flops / 1e12:.1f} TFLOP left, at least "
        f"{flops / rate / 1e9 / 60:.1f} min at the measured {rate:.0f} GFLOP/s")
    t_all = time.perf_counter()
    hs = source.prepare(reader, mine, group, plan, len(batches), config, need_inputs=not start)
    if start:
        hs = load_activations(work, group, start, plan)
    timings = []
    from tqdm import tqdm  # noqa: PLC0415
    bar = tqdm(total=n_layers + 1, initial=start, desc="streaming layers", unit="layer", disable=not progress,
               leave=False)
    group.take_counters()
    for i in range(start, n_layers):
        exit_hook(group.rank, i)
        group.context = f"layer {i}"
        t0 = time.perf_counter()
        layer = source.new_layer(i, reader)
        root = holder(source.layer_path(i), layer)
        t_read = time.perf_counter() - t0
        t1 = time.perf_counter()
        quantized = quantize_block(root, config)
        inner = calib_layers(layer) if quantized else []
        with torch.no_grad():
            if quantized:
                # statistics (split over the ranks, then reduced); the last sample also solves
                t_final = calibrate_block(group, inner, lambda item: source.run_layer(layer, *item),
                                          list(enumerate(hs)), plan[0], len(batches))
                t_stats = time.perf_counter() - t1
                for m in inner:
                    m.fake_quant_weight_cache = m.weight_fake_quant().detach()
            else:
                t_stats = t_final = 0.0
            t2 = time.perf_counter()
            hs = [source.run_layer(layer, j, h) for j, h in enumerate(hs)]
            t_fwd = time.perf_counter() - t2
        t3 = time.perf_counter()
        if group.rank == 0:
            if quantized:
                lowbit.convert(root)
                meta = metadata(root)
            else:
                meta = {"format": "lowbit-1", "layers": {}, "skipped": getattr(root, "_lowbit_skipped", {})}
            write_tensors(out / shard_names[i], dict(root.state_dict()), meta)
        checkpoint(group, work, fp, i + 1, plan, hs, source.state())
        t_write = time.perf_counter() - t3
        comm_bytes, comm_seconds = group.take_counters()
        timings.append({"layer": i, "read": t_read, "statistics_and_solve": t_stats, "last_sample_and_solve": t_final,
                        "forward": t_fwd, "write": t_write, "seconds": time.perf_counter() - t0,
                        "comm_bytes": comm_bytes, "comm_seconds": comm_seconds})
        del layer, root, inner  # (inner holds the calibrated layers)
        bar.set_postfix_str(f"layer {i}: read {t_read:.1f} s, calibrate {t_stats:.1f} s, forward {t_fwd:.1f} s, "
                            f"write {t_write:.1f} s")
        bar.update(1)
        log(f"lowbit stream: layer {i} written ({time.perf_counter() - t0:.1f} s)")
    exit_hook(group.rank, n_layers)
    group.context = "the head"
    t0 = time.perf_counter()
    root, quantized, inner, run, tail = source.head(reader, config)
    if inner:
        with torch.no_grad():
            calibrate_block(group, inner, run, list(enumerate(hs)), plan[0], len(batches))
    if group.rank == 0:
        if quantized:
            lowbit.convert(root)
        skipped = getattr(root, "_lowbit_skipped", {})
        head_layers = metadata(root)["layers"] if quantized else {}
        write_tensors(out / shard_names[n_layers], tail(), {"format": "lowbit-1", "layers": head_layers,
                                                            "skipped": skipped})
        finish_folder(out, model_dir, source.raw_config(), shard_names)
    comm_bytes, comm_seconds = group.take_counters()
    timings.append({"layer": "head", "seconds": time.perf_counter() - t0, "comm_bytes": comm_bytes,
                    "comm_seconds": comm_seconds})
    bar.update(1)
    bar.close()
    clean_up(group, work)
    return {"timings": timings, "seconds": time.perf_counter() - t_all, "peak_rss_bytes": rss_peak_bytes(),
            "estimated_bytes": need, "flops": flops, "gflops_measured": rate, "rank": group.rank,
            "world_size": group.world}


def _mapping_threshold(activation_bytes):
    """Blocks from this size up get their own mappings: layer-sized ones (weights, Hessians,
    solves) then go back to the system when freed (glibc's heap kept them: the peak of a
    16-layer test run of 51 MB layers grew by about 170 MB), while blocks the size of a
    sample's activations are still reused from the heap (a fresh mapping is zero-filled
    page by page on every product). At most 32 MiB, glibc's own ceiling."""
    return min(32 << 20, max(1 << 20, 2 * activation_bytes))


def _check_same_inputs(group, fp):
    """Every rank must quantize the same model with the same config and samples."""
    prints = group.gather_objects(fp, "comparing the ranks' inputs")
    differ = [r for r, p in enumerate(prints) if p != prints[0]]
    if differ:
        raise ValueError(f"ranks {differ} were given another model, config, dtype or calibration samples than rank 0; "
                         f"every process must be started with the same arguments")

"""The streaming run's output folder: opening it (fresh, or resuming an unfinished run),
the per-layer checkpoints of the activations and the progress in ``OUT/.lowbit-stream/``,
the packed shards, and the index and config.json written last."""
import hashlib
import json
import shutil

import torch

from lowbit import _C
from lowbit.checkpoints import INDEX_FILE

WORK_DIR = ".lowbit-stream"


def fingerprint(source, cfg_dict, batches, dtype):
    """What a resumed run must share with the run it continues."""
    h = hashlib.sha256()
    h.update(source.identity())
    h.update(json.dumps(cfg_dict, sort_keys=True, default=sorted).encode())
    h.update(str(dtype).encode())
    for b in batches:
        h.update(b.numpy().tobytes())
    return h.hexdigest()


def write_json(path, obj):
    _C.write_file_atomic(str(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def open_folder(group, out, fp, resume):
    """Rank 0 prepares the output folder and decides where to start; every rank learns it.
    Returns (the first layer to run (0: from the embeddings), the source's saved state)."""
    decision = {"start": 0, "source": {}, "error": None}
    if group.rank == 0:
        try:
            decision["start"], decision["source"] = _prepare(out, fp, resume, group.world)
        except ValueError as e:
            decision["error"] = str(e)
    decision = group.broadcast_object(decision, "opening the output folder")
    if decision["error"]:
        raise ValueError(decision["error"])
    (out / WORK_DIR).mkdir(parents=True, exist_ok=True)  # (a rank on another machine writes its files there)
    return decision["start"], decision["source"]


def _prepare(out, fp, resume, world):
    work = out / WORK_DIR
    start, source_state = 0, {}
    if resume and (work / "state.json").exists():
        state = json.loads((work / "state.json").read_text())
        if state.get("fingerprint") != fp:
            raise ValueError(f"resume: {out} was started with another model, config, dtype or calibration data; "
                             f"remove it or quantize into another folder")
        if state.get("world_size", 1) != world:
            raise ValueError(f"resume: {out} was started by {state.get('world_size', 1)} processes; resume it with "
                             f"the same number (this run has {world})")
        start, source_state = int(state["next_layer"]), state.get("source", {})
    elif work.exists() and not resume:
        raise ValueError(f"{out} holds an unfinished streaming run; pass resume=True (--resume) to continue it, "
                         f"or remove the folder")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    if (out / "config.json").exists():
        (out / "config.json").unlink()  # the folder is incomplete until the end
    return start, source_state


def _activations_file(work, group, layer):
    """This rank's saved inputs of ``layer`` (one file per rank and layer)."""
    return work / f"activations-rank{group.rank}-of-{group.world}-layer{layer}.safetensors"


def load_activations(work, group, layer, plan):
    path = _activations_file(work, group, layer)
    if not path.exists():
        raise ValueError(f"resume: {path} is missing; every process resumes from the activations it wrote (same "
                         f"--out path, same rank on the same machine or a shared file system)")
    names, tensors = torch.ops.lowbit.load_safetensors(str(path))[:2]
    acts = dict(zip(names, tensors))
    return [acts[f"h{j}"].clone() for j in plan]


def checkpoint(group, work, fp, next_layer, plan, hs, source_state):
    """Saves this rank's activations (the inputs of next_layer); once every rank has, rank
    0 records the progress. The inputs of the layer before are then no longer needed."""
    torch.ops.lowbit.save_safetensors(str(_activations_file(work, group, next_layer)), [f"h{j}" for j in plan], hs,
                                      [], [], True)
    group.barrier(f"saving the inputs of layer {next_layer}")
    if group.rank == 0:
        write_json(work / "state.json", {"fingerprint": fp, "next_layer": next_layer, "world_size": group.world,
                                         "source": source_state})
    # state.json says next_layer - 1 or next_layer from here on: older inputs are not needed
    _activations_file(work, group, next_layer - 2).unlink(missing_ok=True)


def clean_up(group, work):
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


def write_tensors(path, tensors, meta):
    text = json.dumps(meta, indent=1, sort_keys=True)
    torch.ops.lowbit.save_safetensors(str(path), list(tensors), [t.detach() for t in tensors.values()],
                                      ["format", "lowbit"], ["pt", text], True)


def finish_folder(out, model_dir, raw_config, shard_names):
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
    write_json(out / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    from lowbit.pretrained import finish_folder as finish  # noqa: PLC0415
    finish(out, model_dir, raw_config, meta)  # config.json last: the folder is complete

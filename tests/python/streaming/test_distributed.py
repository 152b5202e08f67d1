"""Several processes (torch.distributed, gloo; lowbit.distributed): two ranks started by
torchrun give the single process's folder, bit for bit where no sum is involved and within
the fp32 summation-order bound for the Hessians; a rank that dies or hangs makes the other
stop with a clear error within the timeout, and --resume completes the run."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lowbit
from conftest import ROOT, run_lowbit
from lowbit import cli
from lowbit.distributed import Group, calibrate_block, local_samples, reduce_block_state, split_range
from lowbit.modules.calibration import CalibLayer
from lowbit.pretrained import load_pretrained
from lowbit.streaming import WORK_DIR
from lowbit.tokenizers import load_hf_tokenizer

SAMPLES, SEQLEN = 12, 96
W8A8_MINMAX = {"batch_num": 1, "algorithm": {"minmax"}, "skip_layers": {"lm_head"},
               "quant_cfg": {"weights": {"type": "int8", "symmetric": True, "strategy": "channel"},
                             "inputs": {"type": "int8", "symmetric": False, "strategy": "tensor"}}}
EXACT = ["W8A8_MINMAX", "INT8_SMOOTHQUANT_CFG", "HIFP8_QUANTILE_CFG", "HIFP8_CAST_CFG", "MXFP8_QUANT_CFG"]
HESSIAN = ["INT4_GPTQ_WEIGHT_QUANT_CFG", "HIFP8_OFMR_CFG", "INT4_AWQ_WEIGHT_QUANT_CFG"]
U = 2.0 ** -24

WORKER = r"""
import os, sys, datetime
import torch, torch.distributed as dist
sys.path[:0] = [{tests!r}, {here!r}]
import test_distributed as t
from lowbit.streaming import quantize_streaming
torch.set_num_threads(1)
if "WORLD_SIZE" in os.environ:  # under torchrun; otherwise the one-process reference
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
folder, calib, out = sys.argv[1:4]
batches = t.calib_batches(folder, calib)
for name in t.EXACT + t.HESSIAN:
    quantize_streaming(folder, t.config(name), batches, os.path.join(out, name), progress=False)
quantize_streaming(folder, t.config("INT4_GPTQ_WEIGHT_QUANT_CFG"), batches[:2], os.path.join(out, "gptq-2"),
                   progress=False)
h = t.block0_hessians(folder, batches)
if not dist.is_initialized() or dist.get_rank() == 0:
    torch.save(h, os.path.join(out, "hessians.pt"))
if dist.is_initialized():
    dist.destroy_process_group()
"""


def calib_batches(folder, calib):
    tok = load_hf_tokenizer(folder)
    return [b[:, :-1] for b in cli.token_batches(tok, cli.read_samples(calib), SAMPLES, SEQLEN)]


def config(name):
    return dict(W8A8_MINMAX) if name == "W8A8_MINMAX" else lowbit.builtin_config(name)


def block0_hessians(folder, batches):
    """The Hessians of decoder layer 0's GPTQ layers after this process's (or, in a process
    group, every rank's reduced) observation of the first n - 1 samples."""
    from lowbit.checkpoints import read_config
    from lowbit.models.hf_llama import DecoderLayer, LlamaForCausalLM
    from lowbit.streaming.sources import Reader, holder, quantize_block
    group = Group()
    cfg = read_config(folder)
    plan = local_samples(len(batches), group.world, group.rank)
    reader = Reader(folder)
    w = reader.get(["model.embed_tokens.weight"], torch.float32)["model.embed_tokens.weight"]
    hs = [torch.nn.functional.embedding(batches[j], w) for j in plan[:-1]]
    layer = DecoderLayer(cfg, device="meta")
    reader.fill(layer, torch.float32, "model.layers.0.")
    root = holder("model.layers.0", layer)
    c = config("INT4_GPTQ_WEIGHT_QUANT_CFG")
    c["batch_num"] = len(batches)
    assert quantize_block(root, c)
    shell = LlamaForCausalLM(cfg, device="meta")
    inner = [m for m in layer.modules() if isinstance(m, CalibLayer)]
    with torch.no_grad():
        for m in inner:
            m.calib_calls.fill_(plan[0])
        for h in hs:
            layer(h, *shell._rotary(0, h.shape[1]), None)
        if group.active:
            reduce_block_state(group, inner, {}, len(batches) - 1)
    return {m.layer_name: (m.hessian.clone(), int(m.hessian_rows)) for m in inner}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, env_extra=None, timeout=300):
    """Two gloo ranks on this machine, one thread each (static rendezvous on a free port:
    --standalone's fixed port 29400 could be taken). '--redirects 9:1 --tee 9:1' name a
    rank that does not exist: Debian's torch 1.13 fails on the defaults under Python 3.11."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "--redirects", "9:1", "--tee", "9:1",
           *map(str, args)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return r, time.perf_counter() - t0


def _tensors(folder):
    """Every tensor the folder's shards hold, by name."""
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        names, tensors = torch.ops.lowbit.load_safetensors(str(shard))[:2]
        out.update(zip(names, tensors))
    assert out, folder
    return out


def _same_bits(a, b):
    """Bit for bit (a NaN equals the same NaN)."""
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8)))


def _assert_identical(got, want, what):
    assert set(got) == set(want), what
    differ = [k for k in want if not _same_bits(got[k], want[k])]
    assert not differ, (what, differ[:5])


def _assert_within_summation_order(got_folder, want_folder, what):
    """Hessian-based results: every tensor identical, except that a Hessian entry moved by
    its summation-order bound may move a GPTQ code or an OFMR/AWQ choice that sits on a
    rounding or argmin tie; then each layer's dequantized weight stays within 1e-3 relative
    (mean absolute) of the single process's."""
    a, b = load_pretrained(got_folder), load_pretrained(want_folder)
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb), what
    moved = {k.rsplit(".", 1)[0] for k in sb if not _same_bits(sa[k], sb[k])}
    from lowbit.modules.deploy import DeployLayer
    layers = {n: m for n, m in b.named_modules() if isinstance(m, DeployLayer)}
    assert moved <= set(layers), (what, sorted(moved - set(layers))[:5])  # float tensors: bit for bit
    for name in moved:
        wa, wb = a.get_submodule(name).weight_dequant().float(), layers[name].weight_dequant().float()
        rel = float((wa - wb).abs().mean() / wb.abs().mean())
        assert rel <= 1e-3, (what, name, rel)
    return len(moved)


@pytest.fixture(scope="module")
def two_rank_folders(stories_folder, tmp_path_factory):
    """The worker's folders (2 ranks, process group initialised by the caller: the Python
    API path) and the run's wall time."""
    folder, calib, _ = stories_folder
    out = tmp_path_factory.mktemp("dist")
    worker = out / "worker.py"
    worker.write_text(WORKER.format(tests=str(ROOT / "tests" / "python"), here=str(Path(__file__).parent)))
    r, seconds = _torchrun([worker, folder, calib, out])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return out, seconds


@pytest.fixture(scope="module")
def one_process_folders(stories_folder, two_rank_folders):
    """The same worker as one plain process, in the ranks' environment (one thread: a
    float GEMM's summation order, so its last bits, depends on the BLAS thread count)."""
    folder, calib, _ = stories_folder
    out = two_rank_folders[0] / "one"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    r = subprocess.run([sys.executable, str(two_rank_folders[0] / "worker.py"), str(folder), str(calib), str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return out


def test_samples_and_rows_are_split_contiguously():
    assert [list(split_range(10, 3, r)) for r in range(3)] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [list(split_range(1, 3, r)) for r in range(3)] == [[0], [], []]
    assert local_samples(12, 2, 0) == [0, 1, 2, 3, 4, 5, 11] and local_samples(12, 2, 1) == [6, 7, 8, 9, 10, 11]
    assert local_samples(1, 4, 3) == [0]
    with pytest.raises(ValueError, match="at least one calibration sample"):
        local_samples(0, 2, 0)
    g = Group()  # no process group: one process, collectives are the identity
    assert (g.rank, g.world, g.active) == (0, 1, False)
    x = torch.randn(5)
    assert torch.equal(g.sum_fixed_order(x, "test"), x) and g.broadcast_object({"a": 1}, "test") == {"a": 1}


@pytest.mark.parametrize("name", EXACT)
def test_two_ranks_equal_one_process_bit_for_bit(two_rank_folders, one_process_folders, name):
    out, _ = two_rank_folders
    _assert_identical(_tensors(out / name), _tensors(one_process_folders / name), name)
    assert not (out / name / WORK_DIR).exists()


@pytest.mark.parametrize("name", HESSIAN)
def test_two_ranks_equal_one_process_up_to_summation_order(two_rank_folders, one_process_folders, name):
    out, _ = two_rank_folders
    moved = _assert_within_summation_order(out / name, one_process_folders / name, name)
    print(f"{name}: {moved} layers not bit-identical")


def test_a_rank_without_samples_of_its_own(two_rank_folders, one_process_folders):
    # 2 samples, 2 ranks: rank 1 holds only the finalizing sample (its Hessians start empty)
    out, _ = two_rank_folders
    _assert_within_summation_order(out / "gptq-2", one_process_folders / "gptq-2", "gptq, 2 samples")


def test_reduced_hessians_are_within_the_summation_order_bound(two_rank_folders, one_process_folders):
    out, _ = two_rank_folders
    dist_h = torch.load(out / "hessians.pt")
    one_h = torch.load(one_process_folders / "hessians.pt")
    assert set(dist_h) == set(one_h) and len(one_h) == 7
    for name, (h1, rows1) in one_h.items():
        h2, rows2 = dist_h[name]
        assert rows1 == rows2 > 0
        d = torch.sqrt(h1[0].diagonal().double().clamp_min(0))
        gamma = rows1 * U / (1 - rows1 * U)
        bound = 2 * gamma * torch.outer(d, d)
        diff = (h2[0].double() - h1[0].double()).abs().triu()
        assert float((diff - bound.triu()).max()) <= 0, (name, float(diff.max()), float(bound.max()))


def test_a_dead_rank_stops_the_other_and_resume_completes(stories_folder, tmp_path):
    folder, calib, _ = stories_folder
    args = ["-m", "lowbit", "quantize", folder, "--config", "INT4_GPTQ_WEIGHT_QUANT_CFG", "--calib", calib,
            "--samples", SAMPLES, "--seqlen", SEQLEN + 1, "--sequential", "--dist-timeout", 30]
    cut = tmp_path / "cut"
    r, seconds = _torchrun([*args, "--out", cut], {"LOWBIT_TEST_EXIT_AT": "1:2"})
    assert r.returncode != 0
    assert "lowbit: error: rank 0 of 2:" in r.stderr and "rerun with --resume" in r.stderr, r.stderr[-4000:]
    assert seconds < 60, seconds  # the survivor stops at once (the peer's socket closed), no timeout wait
    assert not (cut / "config.json").exists()
    state = json.loads((cut / WORK_DIR / "state.json").read_text())
    assert (state["next_layer"], state["world_size"]) == (2, 2)
    # a resume needs the same number of processes (the samples' split depends on it)
    r = subprocess.run([sys.executable, *map(str, args), "--out", str(cut), "--resume"], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "python")))
    assert r.returncode == 2 and "was started by 2 processes; resume it with the same number" in r.stderr, r.stderr
    r, _ = _torchrun([*args, "--out", cut, "--resume"])
    assert r.returncode == 0, r.stderr[-4000:]
    assert "resuming" in r.stderr and "at layer 2 of 5" in r.stderr
    run_lowbit(*args[2:], "--out", tmp_path / "one")
    _assert_within_summation_order(cut, tmp_path / "one", "resumed")
    assert not (cut / WORK_DIR).exists()


def test_a_hung_rank_times_out_with_a_clear_error(stories_folder, tmp_path):
    folder, calib, _ = stories_folder
    args = ["-m", "lowbit", "quantize", folder, "--config", "INT8_SMOOTHQUANT_CFG", "--calib", calib,
            "--samples", 4, "--seqlen", 33, "--sequential", "--dist-timeout", 5, "--out", tmp_path / "q"]
    r, seconds = _torchrun(args, {"LOWBIT_TEST_EXIT_AT": "1:1:hang"})
    assert r.returncode != 0
    assert "lowbit: error: rank 0 of 2:" in r.stderr and "did not answer within the timeout" in r.stderr, \
        r.stderr[-4000:]
    assert seconds < 60, seconds


def test_without_sequential_several_processes_are_refused(stories_folder, tmp_path):
    folder, calib, _ = stories_folder
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), WORLD_SIZE="2", RANK="0")
    r = subprocess.run([sys.executable, "-m", "lowbit", "quantize", str(folder), "--config", "INT8_SMOOTHQUANT_CFG",
                        "--calib", str(calib), "--out", str(tmp_path / "q")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "only the streaming path is distributed; add --sequential" in r.stderr

"""lowbit's deploy products against ggml (the CPU backend of llama.cpp), same shapes, same run.

For each weight shape (out x in) and activation rows n, times one product y = x @ W^T
(x float32 [n x in]) with lowbit's packed weights and with ggml's quantized weights, in
the same process, in interleaved blocks (lowbit block, ggml blocks; a warm-up call before
each block; --rounds times) and prints medians. Pairs of comparable formats:

    lowbit int4 group 128  (linear_packed)           vs  ggml q4_0 (blocks of 32)
    lowbit int4 group 32   (linear_packed)           vs  ggml q4_0
    lowbit int8 channel    (linear_packed)           vs  ggml q8_0 (blocks of 32)
    lowbit int8 group 32   (linear_packed)           vs  ggml q8_0
    lowbit A8W8 per token  (linear_int8, int8 ch W)  vs  ggml q8_0
and each weight-only pair again in lowbit's opt-in 8-bit compute mode
(linear_dynamic_int8: activations quantized per token inside the op, integer products).

ggml always quantizes the activations to q8_0 inside mul_mat; that is part of its time.
Two ggml columns:
  plain   tensors in a ggml context, ggml_graph_plan + ggml_graph_compute (what
          ggml_graph_compute_with_ctx does, with a reused work buffer instead of one
          allocated in the context per call);
  repack  llama.cpp's default for CPU weights: the weight lives in the CPU backend's extra
          buffer type (CPU_REPACK; on AVX2, q4_0 is re-laid out as interleaved 8x8 blocks),
          computed with ggml_backend_graph_compute. Only where the CPU backend accepts the
          weight there (as llama.cpp's loader checks); q8_0 has no AVX2 repack, so '-'.
Both use one persistent ggml threadpool per thread count (default polling, as llama.cpp's
tools); it is paused after each ggml block so its spinning workers do not take cores from
lowbit's block.

Rows n: 1 (cache-hot: the same weight every call), '1 s' (weights streamed from memory:
each side rotates over copies of its weight twice the L3 size), then the other --rows.
Thread settings (--threads): 1 = CPU time of the calling thread (time.thread_time) with
torch.set_num_threads(1) and ggml n_threads=1; 2 (or more) = wall time (perf_counter) with
torch.set_num_threads(t) and ggml n_threads=t. ratio = lowbit time / ggml time (> 1: lowbit
slower). A correctness check per case compares every product with x @ W_deq^T, W_deq that
side's own dequantized weight (so only activation quantization and rounding remain); a
relative error over 0.1 is flagged and makes the script exit 1.

ggml comes from node-llama-cpp 3.21.1's prebuilt llama.cpp libraries (libggml-base.so and
libggml-cpu-<variant>.so), called with ctypes; the CPU variant is chosen as llama.cpp
does (highest ggml_backend_score(), 0 = cannot run here) and printed at run time. The
libraries are looked up in $LOWBIT_LLAMACPP_DIR (default ~/.cache/lowbit-llamacpp, the
folder the GGUF export test, test_gguf.py, installs into); if they are missing the script prints
how to install them and exits 0.

    PYTHONPATH=python python3 bench/bench_vs_ggml.py [--shapes 4096x4096,11008x4096]
        [--rows 1,8,32,128,512] [--threads 1,2] [--rounds 3] [--block 5]
"""
import argparse
import ctypes
import os
import platform
import statistics
import sys
import time
from ctypes import POINTER, Structure, byref, c_bool, c_char_p, c_int, c_int64, c_size_t, c_uint32, c_void_p
from pathlib import Path

import torch

from bench_deploy import EMPTY, OPS, l3_bytes, ms
from lowbit import formats

LLAMACPP_VERSION = "3.21.1"
LLAMACPP_DIR = Path(os.environ.get("LOWBIT_LLAMACPP_DIR", Path.home() / ".cache" / "lowbit-llamacpp"))
GGML_BINS = LLAMACPP_DIR / "node_modules" / "@node-llama-cpp" / "linux-x64" / "bins" / "linux-x64"
F32, Q4_0, Q8_0 = 0, 2, 8  # enum ggml_type
QNAME = {Q4_0: "q4_0", Q8_0: "q8_0"}
PAIRS = [  # label, lowbit format, granularity, group size, product, ggml type
    ("int4 g128", "int4", "group", 128, "exact", Q4_0),
    ("int4 g128 compute int8", "int4", "group", 128, "int8", Q4_0),
    ("int4 g32", "int4", "group", 32, "exact", Q4_0),
    ("int4 g32 compute int8", "int4", "group", 32, "int8", Q4_0),
    ("int8 ch", "int8", "channel", 0, "exact", Q8_0),
    ("int8 g32", "int8", "group", 32, "exact", Q8_0),
    ("int8 ch compute int8", "int8", "channel", 0, "int8", Q8_0),
    ("A8W8 token", "int8", "channel", 0, "a8w8", Q8_0),
]
MAX_REL_ERR = 0.1
BLOCK_SECONDS = 0.25  # a block stops after this much time (at least one timed call)


# ---- ggml through ctypes (ggml.h, ggml-backend.h, ggml-alloc.h, ggml-cpu.h) -------------
class InitParams(Structure):  # struct ggml_init_params, passed by value
    _fields_ = [("mem_size", c_size_t), ("mem_buffer", c_void_p), ("no_alloc", c_bool)]


class Cplan(Structure):  # struct ggml_cplan
    _fields_ = [("work_size", c_size_t), ("work_data", c_void_p), ("n_threads", c_int),
                ("threadpool", c_void_p), ("abort_callback", c_void_p),
                ("abort_callback_data", c_void_p), ("use_ref", c_bool)]


class ThreadpoolParams(Structure):  # struct ggml_threadpool_params (GGML_MAX_N_THREADS = 512)
    _fields_ = [("cpumask", c_bool * 512), ("n_threads", c_int), ("prio", c_int),
                ("poll", c_uint32), ("strict_cpu", c_bool), ("paused", c_bool)]


LOG_CALLBACK = ctypes.CFUNCTYPE(None, c_int, c_char_p, c_void_p)  # ggml_log_callback
LOG_WARN, LOG_CONT = 3, 5  # enum ggml_log_level


def bind(lib, name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype, f.argtypes = restype, list(argtypes)
    return f


class Ggml:
    """libggml-base plus the best libggml-cpu variant for this CPU, one CPU backend and a
    persistent threadpool for the current thread count."""

    def __init__(self, folder):
        self.base = ctypes.CDLL(str(folder / "libggml-base.so"))
        self.log_level, self.repack_layout = 0, None
        self.log_callback = LOG_CALLBACK(self.log)  # referenced here: ggml keeps the pointer
        bind(self.base, "ggml_log_set", None, LOG_CALLBACK, c_void_p)(self.log_callback, None)
        self.scores = {}
        best = None
        for path in sorted(folder.glob("libggml-cpu-*.so")):
            lib = ctypes.CDLL(str(path))
            score = bind(lib, "ggml_backend_score", c_int)()
            name = path.name[len("libggml-cpu-"):-len(".so")]
            self.scores[name] = score
            if score > 0 and (best is None or score > self.scores[best[0]]):
                best = (name, lib)
        if best is None:
            raise RuntimeError(f"no libggml-cpu-*.so in {folder} runs on this CPU")
        self.variant, self.cpu = best
        b, c = self.base, self.cpu
        p = c_void_p
        self.init = bind(b, "ggml_init", p, InitParams)
        self.free = bind(b, "ggml_free", None, p)
        self.new_tensor_2d = bind(b, "ggml_new_tensor_2d", p, p, c_int, c_int64, c_int64)
        self.get_data = bind(b, "ggml_get_data", p, p)
        self.row_size = bind(b, "ggml_row_size", c_size_t, c_int, c_int64)
        self.tensor_overhead = bind(b, "ggml_tensor_overhead", c_size_t)
        self.graph_overhead = bind(b, "ggml_graph_overhead", c_size_t)
        self.quantize_chunk = bind(b, "ggml_quantize_chunk", c_size_t, c_int, p, p, c_int64, c_int64, c_int64, p)
        self.dequantize = {Q4_0: bind(b, "dequantize_row_q4_0", None, p, p, c_int64),
                           Q8_0: bind(b, "dequantize_row_q8_0", None, p, p, c_int64)}
        self.mul_mat = bind(b, "ggml_mul_mat", p, p, p, p)
        self.new_graph = bind(b, "ggml_new_graph", p, p)
        self.build_forward_expand = bind(b, "ggml_build_forward_expand", None, p, p)
        self.threadpool_params_init = bind(b, "ggml_threadpool_params_init", None, POINTER(ThreadpoolParams), c_int)
        self.alloc_from_buft = bind(b, "ggml_backend_alloc_ctx_tensors_from_buft", p, p, p)
        self.alloc_for_backend = bind(b, "ggml_backend_alloc_ctx_tensors", p, p, p)
        self.buffer_free = bind(b, "ggml_backend_buffer_free", None, p)
        self.buffer_set_usage = bind(b, "ggml_backend_buffer_set_usage", None, p, c_int)
        self.tensor_set = bind(b, "ggml_backend_tensor_set", None, p, p, c_size_t, c_size_t)
        self.tensor_get = bind(b, "ggml_backend_tensor_get", None, p, p, c_size_t, c_size_t)
        self.backend_compute = bind(b, "ggml_backend_graph_compute", c_int, p, p)
        self.dev_supports_op = bind(b, "ggml_backend_dev_supports_op", c_bool, p, p)
        buft_name = bind(b, "ggml_backend_buft_name", c_char_p, p)
        self.graph_plan = bind(c, "ggml_graph_plan", Cplan, p, c_int, p)
        self.graph_compute = bind(c, "ggml_graph_compute", c_int, p, POINTER(Cplan))
        self.threadpool_new = bind(c, "ggml_threadpool_new", p, POINTER(ThreadpoolParams))
        self.threadpool_free = bind(c, "ggml_threadpool_free", None, p)
        self.threadpool_pause = bind(c, "ggml_threadpool_pause", None, p)
        self.set_n_threads = bind(c, "ggml_backend_cpu_set_n_threads", None, p, c_int)
        self.set_threadpool = bind(c, "ggml_backend_cpu_set_threadpool", None, p, p)

        self.backend = bind(c, "ggml_backend_cpu_init", p)()
        self.device = bind(b, "ggml_backend_get_device", p, p)(self.backend)
        reg = bind(b, "ggml_backend_dev_backend_reg", p, p)(self.device)
        proc = bind(b, "ggml_backend_reg_get_proc_address", p, p, c_char_p)(reg, b"ggml_backend_dev_get_extra_bufts")
        self.repack_buft = None
        if proc:
            bufts = ctypes.CFUNCTYPE(POINTER(c_void_p), c_void_p)(proc)(self.device)
            i = 0
            while bufts and bufts[i]:
                if buft_name(bufts[i]) == b"CPU_REPACK":
                    self.repack_buft = bufts[i]
                i += 1
        self.n_threads, self.threadpool = 0, None
        self.work = torch.empty(0, dtype=torch.uint8)

    def log(self, level, text, _user_data):
        """Warnings and errors to stderr; the debug line naming the repack layout is kept."""
        if level != LOG_CONT:
            self.log_level = level
        msg = (text or b"").decode(errors="replace")
        if "repack tensor" in msg:
            self.repack_layout = msg.split()[-1]
        if self.log_level >= LOG_WARN:
            sys.stderr.write(msg)

    def set_threads(self, n):
        params = ThreadpoolParams()
        self.threadpool_params_init(byref(params), n)  # default polling level, as llama.cpp's tools
        pool = self.threadpool_new(byref(params))
        self.set_n_threads(self.backend, n)
        self.set_threadpool(self.backend, pool)
        if self.threadpool:
            self.threadpool_free(self.threadpool)
        self.n_threads, self.threadpool = n, pool

    def pause(self):
        """Send the workers to sleep (the next compute wakes them)."""
        self.threadpool_pause(self.threadpool)

    def work_buffer(self, size):
        if self.work.numel() < size:
            self.work = torch.empty(size, dtype=torch.uint8)
        return self.work.data_ptr()

    def quantize(self, w, qtype):
        """[N x K] float32 -> ggml blocks of type qtype, as a uint8 tensor."""
        n_out, k = w.shape
        w = w.contiguous()
        blob = torch.empty(n_out * self.row_size(qtype, k), dtype=torch.uint8)
        written = self.quantize_chunk(qtype, w.data_ptr(), blob.data_ptr(), 0, n_out, k, None)
        assert written == blob.numel(), (written, blob.numel())
        return blob

    def dequantize_blob(self, blob, qtype, shape):
        out = torch.empty(shape)
        self.dequantize[qtype](blob.data_ptr(), out.data_ptr(), out.numel())
        return out

    def close(self):
        if self.threadpool:
            self.set_threadpool(self.backend, None)
            self.threadpool_free(self.threadpool)
            self.threadpool = None
        bind(self.base, "ggml_backend_free", None, c_void_p)(self.backend)


class GgmlWeight:
    """A quantized weight, ne0 = K, ne1 = N: in an allocated ggml context (plain) or in the
    CPU backend's repack buffer (repack=True; self.ok is False where the backend would not
    take it there)."""

    def __init__(self, g, blob, qtype, shape, repack=False):
        self.g, self.qtype, self.shape, self.buffer, self.ok, self.layout = g, qtype, shape, None, True, None
        n_out, k = shape
        data = 0 if repack else blob.numel() + 4096
        self.ctx = g.init(InitParams(g.tensor_overhead() + data, None, repack))
        self.t = g.new_tensor_2d(self.ctx, qtype, k, n_out)
        if not repack:
            ctypes.memmove(g.get_data(self.t), blob.data_ptr(), blob.numel())
            return
        self.buffer = g.alloc_from_buft(self.ctx, g.repack_buft) if g.repack_buft else None
        if self.buffer is None or not self._repack_supported(k):
            self.ok = False
            return
        g.buffer_set_usage(self.buffer, 1)  # GGML_BACKEND_BUFFER_USAGE_WEIGHTS
        g.repack_layout = None
        g.tensor_set(self.t, blob.data_ptr(), 0, blob.numel())  # repacks here
        self.layout = g.repack_layout

    def _repack_supported(self, k):
        """llama.cpp's test: does the CPU device take a mul_mat with this weight in this buffer?"""
        g = self.g
        ctx = g.init(InitParams(3 * g.tensor_overhead(), None, True))
        try:
            x = g.new_tensor_2d(ctx, F32, k, 1)
            return g.dev_supports_op(g.device, g.mul_mat(ctx, self.t, x))
        finally:
            g.free(ctx)

    def close(self):
        if self.buffer:
            self.g.buffer_free(self.buffer)
        self.g.free(self.ctx)
        self.buffer = self.ctx = None


class GgmlMatmul:
    """out = mul_mat(weight, x): a one-node graph with x [n x K] copied in once."""

    def __init__(self, g, weight, x):
        self.g, self.backend = g, weight.buffer is not None
        n, k = x.shape
        n_out = weight.shape[0]
        meta = 3 * g.tensor_overhead() + g.graph_overhead()
        data = 0 if self.backend else x.numel() * 4 + n * n_out * 4 + 4096
        self.ctx = g.init(InitParams(meta + data, None, self.backend))
        self.x = g.new_tensor_2d(self.ctx, F32, k, n)
        self.out = g.mul_mat(self.ctx, weight.t, self.x)
        self.graph = g.new_graph(self.ctx)
        g.build_forward_expand(self.graph, self.out)
        x = x.contiguous()
        if self.backend:
            self.buffer = g.alloc_for_backend(self.ctx, g.backend)
            g.tensor_set(self.x, x.data_ptr(), 0, x.numel() * 4)
        else:
            self.buffer = None
            ctypes.memmove(g.get_data(self.x), x.data_ptr(), x.numel() * 4)
        self.shape = (n, n_out)

    def __call__(self):
        g = self.g
        if self.backend:
            status = g.backend_compute(g.backend, self.graph)
        else:
            plan = g.graph_plan(self.graph, g.n_threads, g.threadpool)
            plan.work_data = g.work_buffer(plan.work_size)
            status = g.graph_compute(self.graph, byref(plan))
        if status != 0:
            raise RuntimeError(f"ggml compute failed with status {status}")

    def result(self):
        y = torch.empty(self.shape)
        if self.backend:
            self.g.tensor_get(self.out, y.data_ptr(), 0, y.numel() * 4)
        else:
            ctypes.memmove(y.data_ptr(), self.g.get_data(self.out), y.numel() * 4)
        return y

    def close(self):
        if self.buffer:
            self.g.buffer_free(self.buffer)
        self.g.free(self.ctx)
        self.buffer = self.ctx = None


def find_ggml():
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, f"the prebuilt ggml used here is linux-x64 only, not {platform.system()} {platform.machine()}"
    if not (GGML_BINS / "libggml-base.so").exists() or not list(GGML_BINS.glob("libggml-cpu-*.so")):
        return None, (f"ggml libraries not found in {GGML_BINS}; install them with\n"
                      f"  mkdir -p {LLAMACPP_DIR} && cd {LLAMACPP_DIR} && npm init -y &&"
                      f" npm install -E --omit=optional "
                      f"node-llama-cpp@{LLAMACPP_VERSION} @node-llama-cpp/linux-x64@{LLAMACPP_VERSION}\n"
                      f"  (or point LOWBIT_LLAMACPP_DIR at such a folder)")
    return Ggml(GGML_BINS), None


# ---- lowbit ---------------------------------------------------------------------------
def lowbit_case(w, fmt, gran, gs, product):
    """(packed (p, s), fn(x, packed), dequantized weight, packed bytes). product: "exact"
    (linear_packed, fp32 activations), "int8" (the 8-bit compute mode, linear_dynamic_int8)
    or "a8w8" (linear_int8 with per-token activations)"""
    k = w.shape[1]
    s, o = formats.compute_scales(w, fmt, gran, gs, True)
    p = formats.pack(w, fmt, s, o, gran, gs, True)
    deq = formats.unpack(p, fmt, s, k, o, gran, gs, True)
    if product == "int8":
        bits = 8 if fmt == "int8" else 4
        fn = lambda x, ps: OPS.linear_dynamic_int8(x, ps[0], ps[1], bits, gs, k)  # noqa: E731
    elif product == "a8w8":
        a_s, a_o = torch.full((1, 1), 0.05), torch.zeros(1, 1, dtype=torch.int32)  # unused per token
        fn = lambda x, ps: OPS.linear_int8(x, ps[0], ps[1], 8, k, True, a_s, a_o, None)  # noqa: E731
    else:
        fn = lambda x, ps: OPS.linear_packed(x, ps[0], ps[1], EMPTY, None, None, fmt, gran, gs, True, k,  # noqa: E731
                                             x.dtype)
    return (p, s), fn, deq, p.numel() * p.element_size() + s.numel() * s.element_size()


# ---- timing -----------------------------------------------------------------------------
class Rotation:
    """Calls fn on the next item of a list each time (weights streamed from memory)."""

    def __init__(self, items, fn):
        self.items, self.fn, self.i = items, fn, 0

    def __call__(self):
        item = self.items[self.i % len(self.items)]
        self.i += 1
        return self.fn(item)


def block(fn, clock, calls):
    """A warm-up call, then up to `calls` timed calls (fewer if they pass BLOCK_SECONDS)."""
    t = clock()
    fn()
    warm = clock() - t
    calls = max(1, min(calls, int(BLOCK_SECONDS / max(warm, 1e-6))))
    out = []
    for _ in range(calls):
        t = clock()
        fn()
        out.append(clock() - t)
    return out


def interleaved(fns, g, clock, rounds, calls):
    """Median time of each fn (None: not measured), in blocks that alternate every round."""
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            if fn is not None:
                times[i] += block(fn, clock, calls)
                if i > 0:
                    g.pause()
    return [statistics.median(t) if t else None for t in times]


def rel_err(y, ref):
    return ((y - ref).norm() / ref.norm()).item()


def pool_size(nbytes):
    return max(2, -(-2 * l3_bytes() // nbytes))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="4096x4096,11008x4096", help="out x in, comma separated")
    ap.add_argument("--rows", default="1,8,32,128,512", help="activation rows; 1 also gives the streamed row")
    ap.add_argument("--threads", default="1,2", help="1: CPU time of the calling thread; more: wall time")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block", type=int, default=5, help="timed calls per block at most")
    ap.add_argument("--only", default="", help="run only the pairs whose label contains this text")
    args = ap.parse_args()

    g, why = find_ggml()
    if g is None:
        print(f"skip: {why}")
        return 0
    torch.manual_seed(0)
    scores = ", ".join(f"{k} {v}" for k, v in sorted(g.scores.items(), key=lambda kv: -kv[1]) if v > 0)
    print(f"ggml: node-llama-cpp {LLAMACPP_VERSION} prebuilt llama.cpp, CPU variant libggml-cpu-{g.variant}.so "
          f"(ggml_backend_score: {scores}; others 0)")
    print(f"ggml repack buffer type: {'CPU_REPACK' if g.repack_buft else 'not offered (repack column empty)'}; "
          f"lowbit kernels {OPS.isa()} / int8 {OPS.int8_kernel()}; L3 {l3_bytes() >> 20} MiB")
    load, cpus = os.getloadavg()[0], os.cpu_count()
    if load > 0.5:
        print(f"warning: load average {load:.1f} on {cpus} CPUs before the run: other work shares the cores; "
              "wall times with several threads suffer most (a thread that waits for a descheduled peer)")
    print("ms = median per call; ratio = lowbit / ggml (> 1: lowbit slower); n=1 repeats one weight (cache-hot), "
          "'1 s' rotates over copies twice the L3 size (streamed from memory, both sides)")
    rows = [int(v) for v in args.rows.split(",")]
    failed = False
    for shape in args.shapes.split(","):
        n_out, k = (int(v) for v in shape.split("x"))
        w = torch.randn(n_out, k)
        xs = {n: torch.randn(n, k) for n in rows}
        ggml_w = {}  # qtype -> (blob, dequantized, plain weight, repack weight)
        for qtype in sorted({pair[-1] for pair in PAIRS}):
            blob = g.quantize(w, qtype)
            ggml_w[qtype] = (blob, g.dequantize_blob(blob, qtype, (n_out, k)),
                             GgmlWeight(g, blob, qtype, (n_out, k)), GgmlWeight(g, blob, qtype, (n_out, k), True))
        cases = [(label, lowbit_case(w, fmt, gran, gs, product), qtype)
                 for label, fmt, gran, gs, product, qtype in PAIRS if args.only in label]
        for threads in (int(v) for v in args.threads.split(",")):
            torch.set_num_threads(threads)  # lowbit's OpenMP kernels follow torch's setting
            g.set_threads(threads)
            clock = time.thread_time if threads == 1 else time.perf_counter
            what = "CPU time of the calling thread" if threads == 1 else "wall time"
            print(f"\nW {n_out}x{k}, {threads} thread{'s' if threads > 1 else ''} "
                  f"(torch.set_num_threads({threads}), ggml n_threads={threads}), {what}")
            for label, (packed, fn, deq, nbytes), qtype in cases:
                blob, gdeq, gplain, grepack = ggml_w[qtype]
                layout = f", repacked {grepack.layout}" if grepack.ok else ", no repack for it here"
                print(f"{label} ({nbytes / 2**20:.1f} MiB) vs {QNAME[qtype]} ({blob.numel() / 2**20:.1f} MiB{layout})")
                print(f"{'n':>4} {'lowbit':>8} | {'ggml':>8} {'ratio':>6} | {'repack':>8} {'ratio':>6}")
                errs = [0.0, 0.0, 0.0]
                for n in rows:
                    x = xs[n]
                    prods = [GgmlMatmul(g, gplain, x), GgmlMatmul(g, grepack, x) if grepack.ok else None]
                    # correctness: each side against x @ (its own dequantized weight)^T
                    ys = [fn(x, packed)]
                    for prod in prods:
                        if prod is not None:
                            prod()
                            ys.append(prod.result())
                    refs = [x @ deq.T, x @ gdeq.T, x @ gdeq.T]
                    for i, y in enumerate(ys):
                        errs[i] = max(errs[i], rel_err(y, refs[i]))
                    fns = [lambda: fn(x, packed)] + prods
                    t = interleaved(fns, g, clock, args.rounds, args.block)
                    print(row(str(n), t))
                    for prod in prods:
                        if prod is not None:
                            prod.close()
                    if n != 1:
                        continue
                    # streamed: each side rotates over copies of its weight, twice the L3 size in all
                    lb_pool = [tuple(v.clone() for v in packed) for _ in range(pool_size(nbytes))]
                    gcopies = pool_size(blob.numel())
                    plain_pool = [GgmlWeight(g, blob, qtype, (n_out, k)) for _ in range(gcopies)]
                    repack_pool = [GgmlWeight(g, blob, qtype, (n_out, k), True) for _ in range(gcopies)] \
                        if grepack.ok else []
                    plain_prods = [GgmlMatmul(g, pw, x) for pw in plain_pool]
                    repack_prods = [GgmlMatmul(g, rw, x) for rw in repack_pool]
                    fns = [Rotation(lb_pool, lambda ps: fn(x, ps)), Rotation(plain_prods, lambda p: p()),
                           Rotation(repack_prods, lambda p: p()) if repack_prods else None]
                    calls = max(args.block, gcopies)
                    t = interleaved(fns, g, clock, args.rounds, calls)
                    print(row("1 s", t))
                    for obj in plain_prods + repack_prods + plain_pool + repack_pool:
                        obj.close()
                    del lb_pool
                bad = [e > MAX_REL_ERR for e in errs]
                failed |= any(bad)
                names = ["lowbit", "ggml", "repack"][:2 + grepack.ok]
                print("  rel err vs x @ W_deq^T (max over n): " + ", ".join(
                    f"{name} {e:.1e}{' WRONG' if b else ''}" for name, e, b in zip(names, errs, bad)))
        for blob, _, plain, repack in ggml_w.values():
            plain.close()
            repack.close()
    g.close()
    if failed:
        print(f"FAILED: a product's relative error exceeds {MAX_REL_ERR}")
    return 1 if failed else 0


def row(label, t):
    lb, plain, repack = t
    cells = f"{label:>4} {ms(lb, 8)} | {ms(plain, 8)} {lb / plain:6.2f} | "
    cells += f"{ms(repack, 8)} {lb / repack:6.2f}" if repack is not None else f"{'-':>8} {'-':>6}"
    return cells


if __name__ == "__main__":
    sys.exit(main())

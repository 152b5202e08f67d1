"""Several processes quantize one model together (torch.distributed, gloo on CPU).

Used by lowbit.streaming when a process group is initialised (``torchrun ... -m lowbit
quantize ... --sequential`` initialises it from torchrun's environment, see
``init_from_env``). The work of each decoder layer is shared this way:

- samples: the first n - 1 calibration samples are split into contiguous, rank-ordered
  slices (``local_samples``); the last sample is the *finalizing* one: every rank holds it
  (one extra sample of forward work per rank), because the layers finalize on it (the
  solve, OFMR's MIN-MAX fallback and the reported error all look at the last batch);
- statistics: each rank observes its slice, then ``reduce_block_state`` combines the
  layers' buffers: minima and maxima with all_reduce MIN/MAX (exact), sums (Hessians
  X^T X, sample counts, AWQ's channel sums, OFMR's loss tables) in a fixed order
  (``Group.sum_fixed_order``: rank order, float64, rounded once), quantile's running
  average replayed in sample order from the gathered per-call maxima (exact); OFMR's
  activation candidates come from the first sample and are broadcast by rank 0;
- solve: every rank then observes the finalizing sample with identical state; GPTQ
  solves only its contiguous slice of output rows with the common Hessian and the
  slices are gathered (``split_gptq_solve``); the other algorithms finalize on every
  rank (same inputs, same result);
- next inputs: each rank runs its own samples through the calibrated layer.

Equality with one process: everything but the sums is bit-identical. A sum of fp32
partial sums differs from one process's running fp32 sum by the summation order only:
|H_dist - H_1| <= 2 * gamma(T) * sqrt(H_jj * H_kk) entry-wise, gamma(T) = T u / (1 - T u),
u = 2^-24, T the calibration rows (tokens) summed; tests/python/test_distributed.py checks
it on the real Hessians and what it does to the saved tensors.
"""
import datetime
import math
import os
import time
import types

import torch

DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "LOWBIT_DIST_TIMEOUT"
EXIT_HOOK_ENV = "LOWBIT_TEST_EXIT_AT"  # tests: "RANK:LAYER" exits with code 17 there, "RANK:LAYER:hang" hangs
PIECE = 1 << 24  # elements per fixed-order sum: bounds its temporaries to a few x 64 MB

# how each calibration buffer combines across ranks
REDUCTIONS = {"act_min": "min", "act_max": "max", "chan_min": "min", "chan_max": "max", "chan_amax": "max",
              "hessian": "sum", "hessian_rows": "sum", "act_abs_sum": "sum", "act_loss": "sum"}
# buffers that finalize_algorithm (or the first calibration call) sets: nothing to reduce
NOT_STATISTICS = {"w_scale", "w_scale1", "w_offset", "act_scale", "act_offset", "recon_error", "smooth",
                  "weight_src", "weight_q_packed", "act_candidates", "calib_calls"}
FIRST_CALL_BUFFERS = ("act_candidates",)


class DistributedError(RuntimeError):
    """A collective failed: a peer exited or did not answer within the timeout."""


def timeout_seconds(value=None):
    """The collectives' timeout: ``value``, else $LOWBIT_DIST_TIMEOUT, else 600 s."""
    source = "--dist-timeout" if value is not None else TIMEOUT_ENV
    if value is None:
        value = os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {value!r} is not a number of seconds") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{source}: {value!r} must be a positive number of seconds")
    return seconds


def env_world_size():
    """WORLD_SIZE as torchrun sets it (1 when absent)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"WORLD_SIZE: {raw!r} is not an integer") from None
    if n < 1:
        raise ValueError(f"WORLD_SIZE: {n} must be at least 1")
    return n


def init_from_env(timeout_s=None):
    """Initialises the default process group (gloo) from torchrun's environment when
    WORLD_SIZE > 1 and none exists. True when it did (the caller then destroys it)."""
    import torch.distributed as dist
    if env_world_size() == 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={env_world_size()}, but this torch build has no torch.distributed")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ValueError(f"WORLD_SIZE={env_world_size()} but {key} is not set; start the processes with torchrun")
    seconds = timeout_seconds(timeout_s)
    try:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=seconds))
    except RuntimeError as e:
        raise DistributedError(f"rank {os.environ['RANK']}: joining the process group failed within {seconds:g} s "
                               f"({e})") from None
    return True


def split_range(count, world, rank):
    """The contiguous slice of range(count) that ``rank`` of ``world`` owns (sizes differ by
    at most one, the larger slices first)."""
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def local_samples(count, world, rank):
    """Global indices of the samples a rank holds: its slice of the first count - 1, then
    the last (finalizing) sample, which every rank holds."""
    if count < 1:
        raise ValueError("local_samples: at least one calibration sample is needed")
    return list(split_range(count - 1, world, rank)) + [count - 1]


def exit_hook(rank, layer):
    """Tests: ``LOWBIT_TEST_EXIT_AT=RANK:LAYER`` makes that rank exit (code 17) as it starts
    that layer, as a crashed machine would; ``RANK:LAYER:hang`` makes it stop answering."""
    spec = os.environ.get(EXIT_HOOK_ENV, "")
    if spec == f"{rank}:{layer}":
        os._exit(17)
    if spec == f"{rank}:{layer}:hang":
        while True:
            time.sleep(60)


class Group:
    """The collectives streaming needs, on the default process group (a gloo group beside
    it when the default backend is not gloo), or trivial ones in a single process. Counts
    the bytes this rank sends and the seconds spent in collectives (``take_counters``)."""

    def __init__(self):
        import torch.distributed as dist
        self.dist = dist
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.active else 0
        self.world = dist.get_world_size() if self.active else 1
        self.pg = None
        if self.active and dist.get_backend() != "gloo":  # e.g. NCCL: the statistics are CPU tensors
            self.pg = dist.new_group(backend="gloo")
        self.context = ""
        self.bytes_sent = 0
        self.seconds = 0.0

    def take_counters(self):
        out = (self.bytes_sent, self.seconds)
        self.bytes_sent, self.seconds = 0, 0.0
        return out

    def _run(self, what, fn, nbytes=0):
        if not self.active:  # one process: nothing to exchange
            return None
        t0 = time.perf_counter()
        try:
            out = fn()
        except RuntimeError as e:
            where = f" ({self.context})" if self.context else ""
            raise DistributedError(f"rank {self.rank} of {self.world}: {what}{where} failed: another rank exited or "
                                   f"did not answer within the timeout ({str(e).strip()}); the output folder keeps "
                                   f"the finished layers, rerun with --resume (resume=True)") from None
        self.seconds += time.perf_counter() - t0
        self.bytes_sent += int(nbytes)
        return out

    def barrier(self, what):
        self._run(what, lambda: self.dist.barrier(group=self.pg))

    def broadcast_object(self, obj, what):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        size = len(repr(obj)) if self.rank == 0 else 0
        self._run(what, lambda: self.dist.broadcast_object_list(box, src=0, group=self.pg), size * (self.world - 1))
        return box[0]

    def gather_objects(self, obj, what):
        """Every rank's ``obj``, in rank order."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        self._run(what, lambda: self.dist.all_gather_object(out, obj, group=self.pg), len(repr(obj)) * (self.world - 1))
        return out

    def broadcast_(self, tensor, what):
        self._run(what, lambda: self.dist.broadcast(tensor, src=0, group=self.pg),
                  _nbytes(tensor) * (self.world - 1) if self.rank == 0 else 0)

    def extreme_(self, tensor, op, what):
        """In place: the element-wise min or max over the ranks (exact in any order)."""
        rop = self.dist.ReduceOp.MIN if op == "min" else self.dist.ReduceOp.MAX
        self._run(what, lambda: self.dist.all_reduce(tensor, op=rop, group=self.pg),
                  2 * _nbytes(tensor) * (self.world - 1) / self.world)

    def sum_fixed_order(self, tensor, what):
        """The element-wise sum over the ranks, the same on every rank and independent of
        the collective's algorithm: each rank adds one slice of the elements in rank order
        (float64 for floating tensors, rounded once to the dtype), then the slices are
        gathered. Sends 2 (W - 1) / W of the tensor, as a ring all-reduce does."""
        if not self.active:
            return tensor.clone()
        flat = tensor.reshape(-1)
        out = torch.empty_like(flat)
        for start in range(0, flat.numel(), PIECE):
            out[start:start + PIECE] = self._sum_piece(flat[start:start + PIECE], what)
        return out.reshape(tensor.shape)

    def _sum_piece(self, piece, what):
        n, w = piece.numel(), self.world
        chunk = -(-n // w)
        send = torch.zeros(w * chunk, dtype=piece.dtype)
        send[:n] = piece
        recv = torch.empty_like(send)
        self._run(what, lambda: self.dist.all_to_all_single(recv, send, group=self.pg),
                  _nbytes(send) * (w - 1) / w)
        parts = recv.reshape(w, chunk)
        acc = parts[0].double() if piece.is_floating_point() else parts[0].clone()
        for r in range(1, w):  # rank order
            acc += parts[r]
        gathered = [torch.empty(chunk, dtype=piece.dtype) for _ in range(w)]
        mine = acc.to(piece.dtype)
        self._run(what, lambda: self.dist.all_gather(gathered, mine, group=self.pg), _nbytes(mine) * (w - 1))
        return torch.cat(gathered)[:n]

    def gather_rows(self, tensor, rows_per_rank, what):
        """Concatenation (dim 0, rank order) of each rank's ``tensor``, whose row count is
        rows_per_rank[rank] (the other dimensions are equal)."""
        if not self.active:
            return tensor
        most = max(rows_per_rank)
        padded = torch.zeros((most,) + tuple(tensor.shape[1:]), dtype=tensor.dtype)
        padded[:tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        self._run(what, lambda: self.dist.all_gather(parts, padded, group=self.pg), _nbytes(padded) * (self.world - 1))
        return torch.cat([p[:k] for p, k in zip(parts, rows_per_rank)])


def _nbytes(t):
    return t.numel() * t.element_size()


# ---- one block's calibration ---------------------------------------------------------
def calibrate_block(group, layers, run, inputs, first_index, count):
    """Calibrates the CalibLayers ``layers`` of one block: ``run(x)`` is the block's forward
    on one input; ``inputs`` are this rank's samples (global indices first_index, ...,
    then the finalizing sample count - 1, last). The layers see their calls with the
    global call numbers, the statistics are reduced, then every rank finalizes on the last
    sample. With one process this is the plain loop over the samples. Returns the seconds
    of that last step (the last sample, the solves and their gathers)."""
    body, last = list(inputs[:-1]), inputs[-1]
    if group.active:
        for m in layers:
            m.calib_calls.fill_(first_index)
        _split_gptq_solves(group, layers)
    hooks, maxima = _record_call_maxima(group, layers)
    try:
        if group.active and count > 1 and any(hasattr(m, FIRST_CALL_BUFFERS[0]) for m in layers):
            if group.rank == 0:  # the first sample fixes OFMR's activation candidates
                run(body.pop(0))
            _share_first_call_buffers(group, layers)
        for x in body:
            run(x)
    finally:
        for h in hooks:
            h.remove()
    if group.active:
        reduce_block_state(group, layers, maxima, count - 1)
    t0 = time.perf_counter()
    run(last)
    return time.perf_counter() - t0


def _share_first_call_buffers(group, layers):
    for m in layers:
        for name in FIRST_CALL_BUFFERS:
            if hasattr(m, name):
                group.broadcast_(getattr(m, name), f"sharing '{m.layer_name}'.{name}")


def _record_call_maxima(group, layers):
    """Quantile layers keep a running average of each call's max |x|: the per-call maxima
    are recorded so that the average can be replayed in sample order after the gather."""
    maxima = {m: [] for m in layers if group.active and m.static_act and m.algorithm == "quantile"}

    def hook(module, args):
        lo, hi = module._input_range(args[0].detach())
        maxima[module].append(torch.maximum(-lo, hi).float())
    return [m.register_forward_pre_hook(hook) for m in maxima], maxima


def reduce_block_state(group, layers, maxima, calls):
    """Combines the statistics every rank gathered on its samples; afterwards all ranks
    hold the same state, as if one process had observed the first ``calls`` samples."""
    for m in layers:
        group.context = f"layer '{m.layer_name}'"
        for name, buf in list(m.named_buffers(recurse=False)):
            if name in NOT_STATISTICS or (m in maxima and name in ("act_min", "act_max")):
                continue
            if name not in REDUCTIONS:
                raise ValueError(f"layer '{m.layer_name}' (algorithm {m.algorithm!r}): buffer '{name}' has no known "
                                 f"cross-process reduction; distributed calibration supports the built-in "
                                 f"algorithms, run this one in a single process")
            setattr(m, name, _reduce_buffer(group, m, name, buf))
        if m in maxima:
            _replay_running_max(group, m, maxima[m])
        m.calib_calls.fill_(calls)
    group.context = ""


def _reduce_buffer(group, m, name, buf):
    op = REDUCTIONS[name]
    what = f"reducing {name}"
    if op != "sum":
        group.extreme_(buf, op, what)
        return buf
    if name == "hessian" and buf.numel() == 0:  # a rank without samples: nothing accumulated yet
        k = 1
        for d in m.weight_shape[1:]:
            k *= d
        buf = torch.zeros(m.groups, k, k)
    return group.sum_fixed_order(buf, what)


def _replay_running_max(group, m, own):
    """act_max of quantile: m_0, then 0.99 a + 0.01 m_i in sample order (what _observe does
    call by call), from every rank's per-call maxima in rank order: exact."""
    per_rank = group.gather_objects([float(v) for v in own], f"gathering '{m.layer_name}' call maxima")
    a = None
    for v in (torch.tensor(x, dtype=torch.float32) for part in per_rank for x in part):
        a = v if a is None else 0.99 * a + 0.01 * v
    if a is not None:
        m.act_max.copy_(a)
    m.act_min.copy_(torch.zeros(()))


# ---- GPTQ: output rows shared out ----------------------------------------------------
def _split_gptq_solves(group, layers):
    """Makes the GPTQ layers whose rows are independent (channel or group scales, one
    convolution group, not two-level) solve only this rank's rows at finalization."""
    from lowbit.algorithms.gptq import GPTQ
    for m in layers:
        if (isinstance(m, GPTQ) and m.groups == 1 and m.wspec.strategy in ("channel", "group")
                and not m.two_level and m.weight_shape[0] >= group.world):
            m.finalize_algorithm = types.MethodType(_make_split_finalize(group), m)


def _make_split_finalize(group):
    def finalize(self):
        """GPTQ.finalize_algorithm on this rank's rows; the slices are gathered."""
        self.finish_hessian()
        (_, w, h), = self.group_weights()
        n = w.shape[0]
        mine = split_range(n, group.world, group.rank)
        sizes = [len(split_range(n, group.world, r)) for r in range(group.world)]
        q, s, o = self.solve(w[mine.start:mine.stop], h)
        # each rank packs its rows (packing is row by row), the packed rows travel
        s = s.reshape((len(mine),) + tuple(self.w_scale.shape[1:])).to(self.w_scale.dtype)
        o = o.reshape((len(mine),) + tuple(self.w_offset.shape[1:])).to(self.w_offset.dtype)
        packed = self.wspec.weight_pack(q, s, o)
        group.context = f"layer '{self.layer_name}'"
        packed, s, o = (group.gather_rows(t, sizes, "gathering GPTQ rows") for t in (packed, s, o))
        group.context = ""
        self.w_scale.copy_(s)
        self.w_offset.copy_(o)
        self.weight_q_packed = packed
        self.free_hessian()
        return False
    return finalize

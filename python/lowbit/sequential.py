"""Sequential (block by block) calibration: later layers calibrate on the outputs of
already-quantized earlier ones, as the GPTQ and AWQ papers do.

With ``quantize(model, cfg, sequential=True)`` the user's first ``batch_num`` calls are
recorded (and answered in float); at the ``batch_num``-th call the whole calibration
runs, and that call already returns quantized output. ``lowbit.calibrate(model,
batches)`` hands the batches over directly: they are recorded without the float forward
passes that the answers to the first batch_num - 1 calls would cost. The calibration:
  1. layers before the trunk calibrate on the recorded batches (the trunk is the
     nn.ModuleList / nn.Sequential whose children hold the most calibration layers);
  2. the trunk's inputs are captured, then each block calibrates on its cached inputs and
     its quantized outputs become the next block's inputs (the first positional argument,
     or ``hidden_states=`` given by keyword, is replaced; the other arguments are kept);
  3. layers after the trunk calibrate on full forward passes.
Memory: the recorded batches plus one block's inputs for all batches (batch_num x the
activation size at the trunk, allocated once: each block's outputs are written over its
inputs), besides the model; while a block computes its outputs, its layers'
fake-quantized weights (one block's float weights) are kept instead of being rebuilt at
every call.
The recorded batches are not part of state_dict: a sequential calibration cannot be
resumed from a saved state_dict.
"""
import time

import torch
from torch import nn
from tqdm import tqdm

from lowbit.memory import release_freed_memory
from lowbit.modules.calibration import CalibLayer


# Free heap pages go back to the system every TRIM_EVERY batches of a pass: the
# temporaries of each batch leave holes between the long-lived cache and Hessians, which
# otherwise add up (OPT-125M shapes: 696 -> 434 MB added; every 8 batches costs no
# measurable time, every batch 25% more).
TRIM_EVERY = 8


class _Stop(Exception):
    pass


def find_trunk(model):
    best, best_n = None, 0
    for m in model.modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) >= 2:
            n = sum(1 for child in m for x in child.modules() if isinstance(x, CalibLayer))
            if n > best_n:
                best, best_n = m, n
    return best


def _detach(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, tuple):
        return tuple(_detach(o) for o in obj)
    if isinstance(obj, list):
        return [_detach(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


class SequentialCalibrator:
    def __init__(self, model, batch_num, progress=True):
        self.model = model
        self.batch_num = batch_num
        self.recorded = []
        self.running = False
        self.finished = False
        self.progress = progress
        self.layers = [m for m in model.modules() if isinstance(m, CalibLayer)]
        for m in self.layers:
            m.deferred = True  # float, no observation, until their turn
        self.handle = model.register_forward_pre_hook(self._pre_hook, with_kwargs=True) \
            if "with_kwargs" in nn.Module.register_forward_pre_hook.__code__.co_varnames else \
            model.register_forward_pre_hook(self._pre_hook_args)

    def _pre_hook_args(self, module, args):
        return self._pre_hook(module, args, {})

    def _pre_hook(self, module, args, kwargs):
        if not self.running:
            self.record(args, kwargs)
        return None

    @property
    def remaining(self):
        return 0 if self.finished else self.batch_num - len(self.recorded)

    def record(self, args, kwargs):
        """Keeps one calibration batch; the batch_num-th starts the calibration."""
        self.recorded.append((_detach(args), _detach(kwargs)))
        if len(self.recorded) == self.batch_num:
            self.handle.remove()
            self.run()

    def _forward_all(self, fn=None):
        with torch.no_grad():
            for args, kwargs in self.recorded:
                try:
                    (fn or self.model)(*args, **kwargs)
                except _Stop:
                    pass

    def run(self):
        t0 = time.perf_counter()
        self.running = True
        try:
            trunk = find_trunk(self.model)
            blocks = list(trunk) if trunk is not None else []
            in_trunk = {id(x) for b in blocks for x in b.modules()}
            pre = [m for m in self.layers if id(m) not in in_trunk]
            bar = tqdm(total=len(blocks) + 2, desc="sequential calibration", disable=not self.progress, leave=False)
            if not blocks:  # no trunk: one pass, as without sequential mode
                self._enable(self.layers)
                self._forward_all()
                return
            # 1. layers before the trunk (any layer outside it that runs before block 0)
            cached = []

            def capture(module, args, kwargs=None):
                # the first argument gets its own storage: block outputs are written into
                # it (the caller's tensors are never modified, and the cache is allocated
                # once instead of once per block, which keeps the heap from fragmenting)
                args, kwargs = _detach(args), _detach(kwargs or {})
                if not args and "hidden_states" in kwargs:  # a block called by keyword: first argument
                    kwargs = dict(kwargs)
                    args = (kwargs.pop("hidden_states"),)
                if args and isinstance(args[0], torch.Tensor):
                    args = (args[0].clone(),) + tuple(args[1:])
                cached.append((args, kwargs))
                raise _Stop

            self._enable(pre)
            h = self._hook(blocks[0], lambda m, a, k=None: (_ for _ in ()).throw(_Stop()))
            self._forward_all()
            h.remove()
            bar.update(1)
            # 2. capture the trunk input (earlier layers now quantized), then block by block
            h = self._hook(blocks[0], capture)
            self._forward_all()
            h.remove()
            for i, block in enumerate(blocks):
                inner = [m for m in block.modules() if isinstance(m, CalibLayer)]
                self._enable(inner)
                bar.set_postfix_str(f"block {i}")
                with torch.no_grad():
                    for j, (args, kwargs) in enumerate(cached):
                        block(*args, **kwargs)
                        if j % TRIM_EVERY == TRIM_EVERY - 1:
                            release_freed_memory(collect=False)  # (see TRIM_EVERY)
                    for m in inner:  # fake-quantized once for all batches, not once per call
                        m.fake_quant_weight_cache = m.weight_fake_quant().detach()
                    for j, (args, kwargs) in enumerate(cached):  # outputs replace inputs one by one
                        out = block(*args, **kwargs)
                        first = out[0] if isinstance(out, (tuple, list)) else out
                        x = args[0] if args else None
                        if (isinstance(x, torch.Tensor) and isinstance(first, torch.Tensor)
                                and first.shape == x.shape and first.dtype == x.dtype
                                and first.storage().data_ptr() != x.storage().data_ptr()):
                            x.copy_(first)  # into the cache's own storage
                        else:
                            cached[j] = ((first.detach(),) + tuple(args[1:]), kwargs)
                        del args, out, first, x
                        if j % TRIM_EVERY == TRIM_EVERY - 1:
                            release_freed_memory(collect=False)
                    for m in inner:
                        m.fake_quant_weight_cache = None
                bar.update(1)
            # 3. layers after the trunk: full passes, everything before them is quantized
            rest = [m for m in pre if not m.calibrated]
            if rest:
                self._enable(rest)
                self._forward_all()
            bar.update(1)
            bar.close()
        finally:
            self.running = False
            self.finished = True
            self.recorded = []  # the batches are not needed any more
            for m in self.layers:
                m.deferred = False
                m.fake_quant_weight_cache = None
        uncal = [m.layer_name for m in self.layers if not m.calibrated]
        if uncal:
            raise RuntimeError(f"sequential calibration: layers {uncal[:5]} were never called with the recorded "
                               f"batches")
        self.seconds = time.perf_counter() - t0

    @staticmethod
    def _enable(layers):
        for m in layers:
            m.deferred = False

    @staticmethod
    def _hook(module, fn):
        try:
            return module.register_forward_pre_hook(fn, with_kwargs=True)
        except TypeError:  # torch < 2.0: no kwargs in pre-hooks; the forward is wrapped instead
            return _ForwardWrap(module, fn)


class _ForwardWrap:
    """``fn(module, args, kwargs)`` before each call of ``module`` (a pre-hook that sees the
    keyword arguments, which torch < 2.0's pre-hooks do not); ``remove()`` undoes it."""

    def __init__(self, module, fn):
        self.module, self.saved = module, module.__dict__.get("forward")
        inner = module.forward

        def forward(*args, **kwargs):
            fn(module, args, kwargs)
            return inner(*args, **kwargs)

        module.forward = forward

    def remove(self):
        if self.saved is None:
            del self.module.forward
        else:
            self.module.forward = self.saved

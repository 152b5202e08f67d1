"""Sequential (block by block) calibration: later layers calibrate on the outputs of
already-quantized earlier ones, as the GPTQ and AWQ papers do.

With ``quantize(model, cfg, sequential=True)`` the user's first ``batch_num`` calls are
recorded (and answered in float); at the ``batch_num``-th call the whole calibration
runs, and that call already returns quantized output:
  1. layers before the trunk calibrate on the recorded batches (the trunk is the
     nn.ModuleList / nn.Sequential whose children hold the most calibration layers);
  2. the trunk's inputs are captured, then each block calibrates on its cached inputs and
     its quantized outputs become the next block's inputs (the first positional argument
     is replaced, the other arguments are kept);
  3. layers after the trunk calibrate on full forward passes.
Memory: the recorded batches plus one block's inputs for all batches (batch_num x the
activation size at the trunk; each batch's output replaces its input), besides the model.
The recorded batches are not part of state_dict: a sequential calibration cannot be
resumed from a saved state_dict.
"""
import time

import torch
from torch import nn
from tqdm import tqdm

from lowbit.modules.calibration import CalibLayer


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
        if self.running:
            return None
        self.recorded.append((_detach(args), _detach(kwargs)))
        if len(self.recorded) == self.batch_num:
            self.handle.remove()
            self.run()
        return None

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
                cached.append((_detach(args), _detach(kwargs or {})))
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
                    for args, kwargs in cached:
                        block(*args, **kwargs)
                    for j, (args, kwargs) in enumerate(cached):  # outputs replace inputs one by one
                        out = block(*args, **kwargs)
                        first = out[0] if isinstance(out, (tuple, list)) else out
                        cached[j] = ((first.detach(),) + tuple(args[1:]), kwargs)
                        del args, out, first
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
            for m in self.layers:
                m.deferred = False
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
        except TypeError:  # torch < 2.0: no kwargs in pre-hooks
            return module.register_forward_pre_hook(lambda m, a: fn(m, a, {}))

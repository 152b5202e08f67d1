"""Folding inference BatchNorm into the deploy convolution that feeds it (convert's
``fold_batchnorm``).

With running statistics, ``BatchNorm2d(conv(x))`` is ``a * conv(x) + shift`` per output
channel (a = gamma / sqrt(var + eps), shift = beta - mean * a). The deploy convolution
takes ``a`` as its per-row weight multiplier (the ops' ``scale1``, which every kernel
already applies while it decodes a weight row) and ``a * bias + shift`` as its bias, so
the BatchNorm's own pass over the activations disappears and the quantized codes stay
as they are. The BatchNorm module becomes ``nn.Identity``.

Which BatchNorm reads which convolution is a fact of the model's forward, not of its
module tree, so the pairs come from a torch.fx trace (deploy layers as leaves). A pair
is folded only when the BatchNorm's single input is the convolution's output and nothing
else reads that output, each module runs exactly once, and the BatchNorm has running
statistics. A model that fx cannot trace keeps its BatchNorms (logged, not an error).
"""
import logging

import torch
from torch import fx, nn

from lowbit.modules.deploy import DeployConv2d, DeployLayer

log = logging.getLogger("lowbit")


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, DeployLayer) or super().is_leaf_module(m, qualname)


def batchnorm_pairs(model):
    """[(conv name, BatchNorm name)] that fold_batchnorm can fold, in graph order.
    Raises whatever fx raises for an untraceable model."""
    graph = _LeafTracer().trace(model)
    modules = dict(model.named_modules())
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        conv = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        if (isinstance(conv, DeployConv2d) and len(src.users) == 1 and calls[src.target] == 1
                and calls[node.target] == 1 and bn.running_mean is not None
                and bn.num_features == conv.out_channels):
            pairs.append((src.target, node.target))
    return pairs


def batchnorm_affine(bn):
    """(a, shift), float32 [C]: what eval-mode bn computes, as a * x + shift (float64 math)."""
    inv = (bn.running_var.double() + bn.eps).rsqrt()
    a = inv * bn.weight.double() if bn.weight is not None else inv
    shift = -bn.running_mean.double() * a
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return a.float(), shift.float()


def fold_batchnorm(model):
    """Folds every foldable (deploy Conv2d -> BatchNorm2d) pair of model, in place;
    returns the pairs folded."""
    from lowbit.api import _replace  # noqa: PLC0415  (api imports this module)
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return []
    try:
        pairs = batchnorm_pairs(model)
    except Exception as e:  # noqa: BLE001  (fx raises many kinds for models it cannot trace)
        log.info("lowbit.convert: BatchNorm layers not folded: torch.fx cannot trace the model (%s: %s)",
                 type(e).__name__, e)
        return []
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        with torch.no_grad():
            conv.fold_output_affine(*batchnorm_affine(bn))
        conv.folded_batchnorm = bn_name
        _replace(model, bn_name, nn.Identity())
        log.info("lowbit.convert: BatchNorm '%s' folded into '%s'", bn_name, conv_name)
    return pairs

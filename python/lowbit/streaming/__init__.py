"""Streaming calibration: a checkpoint folder quantized block by block with only the
calibration activations and ONE decoder layer in memory, for models larger than RAM.
Same numerics as ``quantize(model, cfg, sequential=True)`` on the whole model: each
decoder layer calibrates on the outputs of the already-quantized layers before it (its
fake-quantized outputs become the next layer's inputs), then the head on the final
block's output; the result is bit-identical (tests compare the packed tensors).

For each layer: its weights are read from the checkpoint (memory-mapped, converted to the
compute dtype), the calibration activations run through it (statistics, then the solve
at the last batch), then through the calibrated layer to give the next inputs; the packed
layer is written to its own shard of the output folder and everything is freed. Blocks
larger than two samples' activations get their own mappings from then on (glibc's malloc
would otherwise keep freed layers in its heap), so the process's RSS follows what is live.

The model is lowbit's own Llama family (from config.json) or, for other architectures, a
module tree the user passes (``model=``, sources.py).

Resumable: after each layer the activations (fp32, exact; one file per process and
layer) and then the progress are written atomically to ``OUT/.lowbit-stream/``;
``resume=True`` continues after the last finished layer and gives the same result as an
uninterrupted run. The folder's config.json is written last and removed when a run
starts, so an unfinished folder never looks complete.

Several processes (torch.distributed initialised, e.g. by torchrun) share the work:
lowbit.distributed describes what is split and what is reduced.

Files: run.py (the loop), sources.py (what is streamed), folder.py (the output folder,
checkpoints and resume), budget.py (memory and time estimates)."""
from lowbit.streaming.budget import estimate_peak_bytes, layer_flops, measured_gflops
from lowbit.streaming.folder import WORK_DIR
from lowbit.streaming.run import quantize_streaming

__all__ = ["quantize_streaming", "WORK_DIR", "estimate_peak_bytes", "layer_flops", "measured_gflops"]

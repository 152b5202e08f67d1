"""The streaming run's budget: the peak memory it will need, the FLOPs it will do, this
machine's matmul rate (for the time floor printed before starting) and the measured peak."""
import resource
import time

import torch


def rss_peak_bytes():
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
    """Memory the streaming run of a Llama-family config needs beyond the Python process:
    activations (fp32, twice during the pass that replaces them), one layer in the compute
    dtype plus its fake-quantized copy and the algorithms' temporaries (about two fp32
    copies), the Hessians of one layer (K x K fp32 per projection) and the two K x K
    factorisations GPTQ holds beside the widest one while it solves, the embedding matrix
    while the first activations are made."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    qkv = cfg.num_attention_heads * cfg.head_dim + 2 * cfg.num_key_value_heads * cfg.head_dim
    layer_params = h * qkv + cfg.num_attention_heads * cfg.head_dim * h + 3 * h * i
    tokens = sum(b.shape[1] for b in batches)
    att = max(b.shape[1] for b in batches) ** 2 * cfg.num_attention_heads * 4 * 2
    widest = max(h, i, cfg.num_attention_heads * cfg.head_dim)
    hess = (5 * h * h + i * i + 2 * widest * widest) * 4 if algorithm_hessian else 0
    embed = cfg.vocab_size * h * torch.empty((), dtype=dtype).element_size()
    return block_peak_bytes(layer_params, tokens, h, dtype, hess) + att + max(embed, layer_params * 4)


def block_peak_bytes(layer_params, tokens, hidden, dtype, hessian_bytes):
    """The part every architecture shares: activations (fp32, twice while they are
    replaced), the layer in ``dtype`` plus two fp32 copies, the Hessians and solves."""
    esize = torch.empty((), dtype=dtype).element_size()
    return 2 * tokens * hidden * 4 + layer_params * (esize + 8) + hessian_bytes


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
    hessian = 2 * tokens * (4 * h * h + qd * qd + 2 * h * h + i * i) if uses_hessian(algorithm) else 0
    return forward + hessian


def uses_hessian(algorithm):
    return algorithm in ("gptq", "awq", "ofmr")


def measured_gflops(dtype=torch.float32):
    """This machine's matmul rate now (median of 5 products of 512 x 2048 x 2048)."""
    a, b = torch.randn(512, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 512 * 2048 * 2048 / sorted(times)[2] / 1e9

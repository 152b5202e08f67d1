"""Hugging Face Llama-family causal LMs (Llama, Mistral, Qwen2) without `transformers`.

The module tree and parameter names are those of `transformers` (`model.embed_tokens`,
`model.layers.N.self_attn.q_proj`, `model.layers.N.mlp.gate_proj`, `model.norm`,
`lm_head`), so a checkpoint's tensor names are this model's state_dict keys and lowbit
treats a `transformers` model object and this one alike (`model.layers` is the trunk
that sequential calibration walks).

Numerics follow `transformers`: RMSNorm in float32 then scaled in the input dtype;
rotary embedding by "rotate half" (dimension i paired with i + head_dim / 2) with
optional "llama3" frequency scaling; grouped-query attention; SiLU-gated MLP;
Mistral's sliding window when the sequence is longer than it.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class HFLlamaConfig:
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int = None
    max_position_embeddings: int = 2048
    bos_token_id: int = None
    eos_token_id: object = None
    torch_dtype: str = "float32"
    raw: dict = field(default_factory=dict, repr=False)

    @staticmethod
    def from_dict(d):
        """Reads a config.json dict; a clear error for what this loader cannot run."""
        if not isinstance(d, dict):
            raise ValueError(f"config.json: expected a JSON object, got {type(d).__name__}")
        archs = d.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ValueError(f"config.json: architectures {archs!r} is not supported; supported: "
                             f"{', '.join(SUPPORTED_ARCHITECTURES)}")

        def need(key, kind=int):
            if key not in d:
                raise ValueError(f"config.json: '{key}' is missing")
            v = d[key]
            if kind is int and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"config.json: '{key}' must be a positive int, got {v!r}")
            return v

        hidden, heads = need("hidden_size"), need("num_attention_heads")
        kv = d.get("num_key_value_heads") or heads
        if not isinstance(kv, int) or kv <= 0 or heads % kv:
            raise ValueError(f"config.json: num_key_value_heads {kv!r} must divide num_attention_heads {heads}")
        head_dim = d.get("head_dim") or hidden // heads
        if head_dim % 2:
            raise ValueError(f"config.json: head_dim {head_dim} must be even (rotary pairs)")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config.json: hidden_act {act!r} is not supported; supported: silu")
        scaling = d.get("rope_scaling")
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind not in ("llama3", "default"):
                raise ValueError(f"config.json: rope_scaling type {kind!r} is not supported; supported: null, "
                                 f"'default', 'llama3'")
        dtype = d.get("torch_dtype") or "float32"
        if dtype not in _DTYPES:
            raise ValueError(f"config.json: torch_dtype {dtype!r} is not supported; supported: {', '.join(_DTYPES)}")
        return HFLlamaConfig(
            architecture=arch, hidden_size=hidden, intermediate_size=need("intermediate_size"),
            num_hidden_layers=need("num_hidden_layers"), num_attention_heads=heads, num_key_value_heads=kv,
            vocab_size=need("vocab_size"), head_dim=head_dim, rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(d.get("rope_theta", 10000.0)), rope_scaling=scaling,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", arch == "Qwen2ForCausalLM")),
            mlp_bias=bool(d.get("mlp_bias", False)),
            sliding_window=d.get("sliding_window") if d.get("use_sliding_window", True) else None,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"), torch_dtype=dtype, raw=dict(d))

    @property
    def dtype(self):
        return _DTYPES[self.torch_dtype]


def rope_frequencies(cfg):
    """Inverse frequencies [head_dim / 2] of the rotary embedding (llama3 scaling applied)."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    s = cfg.rope_scaling
    if s and s.get("rope_type", s.get("type")) == "llama3":
        factor, low, high = float(s["factor"]), float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
        old_ctx = float(s.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        smooth = ((old_ctx / wavelen) - low) / (high - low)
        blended = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(wavelen > low_wavelen, inv / factor, torch.where(wavelen < high_wavelen, inv, blended))
    return inv.float()


class RMSNorm(nn.Module):
    def __init__(self, dim, eps, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg, device=None):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.sliding_window = cfg.sliding_window
        h, b = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(h, self.heads * self.head_dim, bias=b, device=device)
        self.k_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=b, device=device)
        self.v_proj = nn.Linear(h, self.kv_heads * self.head_dim, bias=b, device=device)
        self.o_proj = nn.Linear(self.heads * self.head_dim, h, bias=False, device=device)

    def forward(self, x, cos, sin, cache=None):
        """x [B, T, hidden] at the new positions; cos/sin [T, head_dim]; `cache` (a dict)
        holds the keys and values of earlier positions and receives the new ones."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        c, s = cos.to(q.dtype), sin.to(q.dtype)
        q, k = q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        total, rep = k.shape[2], self.heads // self.kv_heads
        # Query head h reads key/value head h // rep (repeat_interleave's pairing): the rep
        # query heads of a key/value head go in as rows of one product with it, so the keys
        # and values are never copied rep times (one new position: kv_heads products of
        # rep rows instead of `heads` products of one).
        qg = q.reshape(b, self.kv_heads, rep * t, self.head_dim)
        att = (qg @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        att = att.float()
        if t > 1 or self.sliding_window:  # one new position sees every cached one: nothing to hide
            pos_q = torch.arange(total - t, total).unsqueeze(1)
            pos_k = torch.arange(total).unsqueeze(0)
            hidden = pos_k > pos_q
            if self.sliding_window:
                hidden = hidden | (pos_q - pos_k >= self.sliding_window)
            att = att.view(b, self.kv_heads, rep, t, total).masked_fill(hidden, float("-inf"))
            att = att.view(b, self.kv_heads, rep * t, total)
        out = (F.softmax(att, dim=-1).to(q.dtype) @ v).view(b, self.heads, t, self.head_dim)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg, device=None):
        super().__init__()
        h, i, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=b, device=device)
        self.up_proj = nn.Linear(h, i, bias=b, device=device)
        self.down_proj = nn.Linear(i, h, bias=b, device=device)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg, device=None):
        super().__init__()
        self.self_attn = Attention(cfg, device)
        self.mlp = MLP(cfg, device)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device)

    def forward(self, x, cos, sin, cache=None):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, cfg, device=None):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, device=device)
        self.layers = nn.ModuleList(DecoderLayer(cfg, device) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device)


class LlamaForCausalLM(nn.Module):
    """tokens [B, T] -> logits [B, T, vocab]; Mistral and Qwen2 differ only in their config."""

    def __init__(self, cfg, device=None):
        """device="meta" builds the modules without memory (load_hf_model fills them)."""
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg, device)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device=device)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_frequencies(cfg), persistent=False)

    @property
    def max_positions(self):
        return self.config.max_position_embeddings

    def _rotary(self, start, t):
        pos = torch.arange(start, start + t, dtype=torch.float32)
        ang = torch.outer(pos, self.inv_freq)
        ang = torch.cat((ang, ang), dim=-1)
        return ang.cos()[None, None], ang.sin()[None, None]

    def forward(self, tokens, caches=None):
        """With `caches` (new_caches()) the tokens continue the cached positions."""
        t = tokens.shape[1]
        start = 0 if caches is None or "k" not in caches[0] else caches[0]["k"].shape[2]
        if start + t > self.max_positions:
            raise ValueError(f"tokens: sequence length {start + t} exceeds max_position_embeddings "
                             f"{self.max_positions}")
        cos, sin = self._rotary(start, t)
        h = self.model.embed_tokens(tokens)
        for i, layer in enumerate(self.model.layers):
            h = layer(h, cos, sin, None if caches is None else caches[i])
        return self.lm_head(self.model.norm(h))

    def new_caches(self):
        return [{} for _ in self.model.layers]

    @torch.no_grad()
    def generate(self, tokens, max_new_tokens, eos_id=None):
        """Greedy continuation of a token list with a key/value cache (the prompt in one
        call, then one token per call); stops after eos_id. Returns the full list."""
        seq = list(tokens)
        if len(seq) + max_new_tokens > self.max_positions:
            raise ValueError(f"generate: {len(seq)} + {max_new_tokens} tokens exceed max_position_embeddings "
                             f"{self.max_positions}")
        caches = self.new_caches()
        logits = self(torch.tensor([seq]), caches)
        for i in range(max_new_tokens):
            seq.append(int(logits[0, -1].argmax()))
            if seq[-1] == eos_id or i + 1 == max_new_tokens:
                break
            logits = self(torch.tensor([seq[-1:]]), caches)
        return seq

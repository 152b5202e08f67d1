"""llama2.c checkpoints ("v0" format) as a torch ``nn.Module`` built of ``nn.Linear``.

File layout: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
seq_len; a negative vocab_size means an unshared classifier), then fp32 arrays:
token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final,
freq_cis_real, freq_cis_imag, [wcls]. Per-layer arrays are stacked over layers.
"""
import heapq
import math
import struct
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LlamaConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool = True


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def _rope(x, cos, sin):
    # x: [B, T, H, D]; rotates consecutive pairs (llama2.c convention)
    xr, xi = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack((xr * c - xi * s, xr * s + xi * c), dim=-1).flatten(-2)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache=None):
        """x: the new positions; cos/sin: their rotary rows. `cache` (a dict) holds the keys
        and values of earlier positions and receives the new ones."""
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim)
        k = self.wk(x).view(b, t, self.n_kv, self.head_dim)
        v = self.wv(x).view(b, t, self.n_kv, self.head_dim)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=1), torch.cat([cache["v"], v], dim=1)
            cache["k"], cache["v"] = k, v
        total = k.shape[1]
        rep = self.n_heads // self.n_kv
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        mask = torch.full((t, total), float("-inf"), device=x.device).triu(total - t + 1)
        att = F.softmax(att.float() + mask, dim=-1).type_as(q)
        return self.wo((att @ v).transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x, cos, sin, cache=None):
        h = x + self.attention(self.attention_norm(x), cos, sin, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    """Llama-2 architecture as in llama2.c: tokens [B, T] -> logits [B, T, vocab]."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        head_dim = cfg.dim // cfg.n_heads
        self.register_buffer("freq_cos", torch.zeros(cfg.seq_len, head_dim // 2), persistent=False)
        self.register_buffer("freq_sin", torch.zeros(cfg.seq_len, head_dim // 2), persistent=False)

    def forward(self, tokens, caches=None):
        """tokens [B, T] -> logits [B, T, vocab]. With `caches` (one dict per layer, see
        new_caches) the tokens continue the cached positions: one token per call decodes."""
        t = tokens.shape[1]
        start = 0 if caches is None or "k" not in caches[0] else caches[0]["k"].shape[1]
        if start + t > self.cfg.seq_len:
            raise ValueError(f"tokens: sequence length {start + t} exceeds the model's seq_len {self.cfg.seq_len}")
        h = self.tok_embeddings(tokens)
        cos, sin = self.freq_cos[start:start + t], self.freq_sin[start:start + t]
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, None if caches is None else caches[i])
        return self.output(self.norm(h))

    def new_caches(self):
        return [{} for _ in self.layers]

    @torch.no_grad()
    def generate(self, tokens, max_new_tokens):
        """Greedy continuation of a 1-D token list with a key/value cache (the prompt in one
        call, then one token per call); returns the full token list."""
        seq = list(tokens)
        if len(seq) + max_new_tokens > self.cfg.seq_len:
            raise ValueError(f"generate: {len(seq)} + {max_new_tokens} tokens exceed seq_len {self.cfg.seq_len}")
        caches = self.new_caches()
        logits = self(torch.tensor([seq]), caches)
        for i in range(max_new_tokens):
            seq.append(int(logits[0, -1].argmax()))
            if i + 1 < max_new_tokens:
                logits = self(torch.tensor([seq[-1:]]), caches)
        return seq


def precompute_rope(model, theta=10000.0):
    """Fills the rotary tables of a model built from a config (checkpoints carry them)."""
    head_dim = model.cfg.dim // model.cfg.n_heads
    freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angle = torch.arange(model.cfg.seq_len, dtype=torch.float64)[:, None] * freq[None, :]
    model.freq_cos.copy_(torch.cos(angle).float())
    model.freq_sin.copy_(torch.sin(angle).float())
    return model


def load_llama2c(path):
    """Builds a float32 ``Llama`` from a llama2.c v0 checkpoint file."""
    raw = open(path, "rb").read()
    if len(raw) < 28:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for a llama2.c header")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("7i", raw[:28])
    cfg = LlamaConfig(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq_len, vocab > 0)
    data = np.frombuffer(raw, dtype=np.float32, offset=28)
    head_dim = dim // n_heads
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        if pos + n > data.size:
            raise ValueError(f"{path}: truncated checkpoint (needs more than {data.size} floats)")
        out = torch.from_numpy(data[pos:pos + n].copy()).view(*shape)
        pos += n
        return out

    model = Llama(cfg)
    L = n_layers
    emb = take(cfg.vocab_size, dim)
    rms_att = take(L, dim)
    wq, wk = take(L, n_heads * head_dim, dim), take(L, n_kv * head_dim, dim)
    wv, wo = take(L, n_kv * head_dim, dim), take(L, dim, n_heads * head_dim)
    rms_ffn = take(L, dim)
    w1, w2, w3 = take(L, hidden, dim), take(L, dim, hidden), take(L, hidden, dim)
    rms_final = take(dim)
    cos, sin = take(seq_len, head_dim // 2), take(seq_len, head_dim // 2)
    wcls = None if cfg.shared_classifier else take(cfg.vocab_size, dim)
    with torch.no_grad():
        model.tok_embeddings.weight.copy_(emb)
        model.norm.weight.copy_(rms_final)
        if wcls is None:
            model.output.weight = model.tok_embeddings.weight  # tied, as in the checkpoint
        else:
            model.output.weight.copy_(wcls)
        model.freq_cos.copy_(cos)
        model.freq_sin.copy_(sin)
        for i, blk in enumerate(model.layers):
            blk.attention_norm.weight.copy_(rms_att[i])
            blk.ffn_norm.weight.copy_(rms_ffn[i])
            blk.attention.wq.weight.copy_(wq[i])
            blk.attention.wk.weight.copy_(wk[i])
            blk.attention.wv.weight.copy_(wv[i])
            blk.attention.wo.weight.copy_(wo[i])
            blk.feed_forward.w1.weight.copy_(w1[i])
            blk.feed_forward.w2.weight.copy_(w2[i])
            blk.feed_forward.w3.weight.copy_(w3[i])
    return model.eval()


class Tokenizer:
    """llama2.c tokenizer: byte-pair merges chosen by score (SentencePiece style)."""

    def __init__(self, pieces, scores):
        self.pieces = pieces
        self.scores = scores
        self.index = {p: i for i, p in enumerate(pieces)}
        self.bos, self.eos = 1, 2

    def encode(self, text, bos=True):
        """Token ids of ``text``: characters first, then repeatedly the adjacent pair whose
        merged piece scores highest (leftmost on ties), as llama2.c does; a heap over a
        linked list keeps it O(n log n)."""
        ids = []
        if text:
            ids.append(self.index[b" "])  # the dummy prefix SentencePiece adds
        for ch in text:
            b = ch.encode("utf-8")
            if b in self.index:
                ids.append(self.index[b])
            else:  # byte fallback: <0xXX> pieces come after the 3 special tokens
                ids.extend(byte + 3 for byte in b)
        n = len(ids)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = []

        def push(i):
            j = nxt[i]
            if j < n:
                m = self.index.get(self.pieces[ids[i]] + self.pieces[ids[j]])
                if m is not None:
                    heapq.heappush(heap, (-self.scores[m], i, ids[i], ids[j], m))

        for i in range(n - 1):
            push(i)
        while heap:
            _, i, a, b, m = heapq.heappop(heap)
            j = nxt[i] if i < n else n
            if not alive[i] or j >= n or ids[i] != a or ids[j] != b:
                continue  # stale entry
            ids[i] = m
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            if prv[i] >= 0:
                push(prv[i])
            push(i)
        out = [ids[i] for i in range(n) if alive[i]]
        return ([self.bos] if bos else []) + out

    def decode(self, ids):
        out = b""
        for prev, i in zip([None] + list(ids[:-1]), ids):
            if i in (self.bos, self.eos):
                continue
            piece = self.pieces[i]
            if prev == self.bos and piece.startswith(b" "):
                piece = piece[1:]
            if piece.startswith(b"<0x") and piece.endswith(b">") and len(piece) == 6:
                piece = bytes([int(piece[3:5], 16)])
            out += piece
        return out.decode("utf-8", errors="replace")


def load_tokenizer(path, vocab_size):
    raw = open(path, "rb").read()
    pos = 4  # max_token_length
    pieces, scores = [], []
    for _ in range(vocab_size):
        score, n = struct.unpack_from("fi", raw, pos)
        pos += 8
        pieces.append(raw[pos:pos + n])
        pos += n
        scores.append(score)
    return Tokenizer(pieces, scores)

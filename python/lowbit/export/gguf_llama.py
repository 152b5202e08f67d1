"""GGUF export of the Llama family lowbit loads: llama2.c models and Hugging Face
Llama / Mistral (llama.cpp architecture ``llama``) and Qwen2 (``qwen2``) models, float or
converted by lowbit.

Names and metadata follow llama.cpp's converters. Hugging Face Llama/Mistral store the
rows of q_proj/k_proj in rotate-half order; llama.cpp rotates consecutive pairs (as
llama2.c does), so those rows are put back per head: row 2j + i of a head takes HF row
i * head_dim / 2 + j. Qwen2 keeps its order (llama.cpp runs it with the rotate-half
rope). Row permutations move whole rows of blocks: codes and scales are unchanged.

Each quantized layer is written in the GGUF type that holds its codes and scales exactly
(gguf_blocks.py) or refused; a quantized layer whose K is not a multiple of 32 is written
as its deploy weights in F32 (exact, logged); float layers, embeddings and norms in F32
(F16 where the model's weights are fp16).
"""
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lowbit.export import gguf_blocks as blocks
from lowbit.export import gguf_tokenizer as toks
from lowbit.export.gguf_writer import F32, FLOAT32, STRING, TYPE_NAMES, UINT32, GGUFWriter

log = logging.getLogger("lowbit.export")
_FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q4_K": 14, "Q6_K": 18}  # (14: Q4_K_S)


def _unpermute_rows(heads):
    """Row order that turns HF rotate-half rows into llama.cpp's pair order (per head)."""
    def order(n_rows):
        d = n_rows // heads
        return np.arange(n_rows).reshape(heads, 2, d // 2).transpose(0, 2, 1).reshape(-1)
    return order


def _llama2c_plan(model):
    c = model.cfg
    hp = {"arch": "llama", "context": c.seq_len, "embd": c.dim, "ff": c.hidden_dim, "blocks": c.n_layers,
          "heads": c.n_heads, "kv_heads": c.n_kv_heads, "head_dim": c.dim // c.n_heads, "eps": float(model.norm.eps),
          "theta": 10000.0, "name": "llama2.c"}
    t = [("token_embd.weight", model.tok_embeddings.weight, None), ("output_norm.weight", model.norm.weight, None)]
    if model.output.weight is not model.tok_embeddings.weight or not isinstance(model.output, torch.nn.Linear):
        t.append(("output.weight", model.output, None))
    for i, b in enumerate(model.layers):
        p = f"blk.{i}."
        t += [(p + "attn_norm.weight", b.attention_norm.weight, None),
              (p + "attn_q.weight", b.attention.wq, None), (p + "attn_k.weight", b.attention.wk, None),
              (p + "attn_v.weight", b.attention.wv, None), (p + "attn_output.weight", b.attention.wo, None),
              (p + "ffn_norm.weight", b.ffn_norm.weight, None), (p + "ffn_gate.weight", b.feed_forward.w1, None),
              (p + "ffn_down.weight", b.feed_forward.w2, None), (p + "ffn_up.weight", b.feed_forward.w3, None)]
    return hp, t


def _hf_plan(model):
    c = model.config
    if c.rope_scaling:
        raise ValueError(f"export: rope_scaling {c.rope_scaling!r} is not supported by this exporter (supported: none)")
    qwen = c.architecture == "Qwen2ForCausalLM"
    hp = {"arch": "qwen2" if qwen else "llama", "context": c.max_position_embeddings, "embd": c.hidden_size,
          "ff": c.intermediate_size, "blocks": c.num_hidden_layers, "heads": c.num_attention_heads,
          "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim, "eps": float(c.rms_norm_eps),
          "theta": float(c.rope_theta), "name": c.raw.get("_name_or_path") or c.architecture}
    m = model.model
    t = [("token_embd.weight", m.embed_tokens.weight, None), ("output_norm.weight", m.norm.weight, None)]
    if not (c.tie_word_embeddings and isinstance(model.lm_head, torch.nn.Linear)):
        t.append(("output.weight", model.lm_head, None))
    qperm = None if qwen else _unpermute_rows(c.num_attention_heads)
    kperm = None if qwen else _unpermute_rows(c.num_key_value_heads)
    for i, b in enumerate(m.layers):
        p, a, f = f"blk.{i}.", b.self_attn, b.mlp
        t += [(p + "attn_norm.weight", b.input_layernorm.weight, None),
              (p + "attn_q.weight", a.q_proj, qperm), (p + "attn_k.weight", a.k_proj, kperm),
              (p + "attn_v.weight", a.v_proj, None), (p + "attn_output.weight", a.o_proj, None),
              (p + "ffn_norm.weight", b.post_attention_layernorm.weight, None),
              (p + "ffn_gate.weight", f.gate_proj, None), (p + "ffn_down.weight", f.down_proj, None),
              (p + "ffn_up.weight", f.up_proj, None)]
        # (a float nn.Linear and a deploy layer both answer .bias: a parameter, a buffer or None)
        for proj, src, perm in (("q", a.q_proj, qperm), ("k", a.k_proj, kperm), ("v", a.v_proj, None),
                                ("output", a.o_proj, None)):
            bias = src.bias
            if bias is not None:
                if not qwen or proj == "output":
                    raise blocks.ExportRefused(f"layer '{_module_name(model, src)}': has a bias, which llama.cpp's "
                                               f"{hp['arch']} graph does not read here")
                t.append((p + f"attn_{proj}.bias", bias, perm))
        for src in (f.gate_proj, f.up_proj, f.down_proj):
            if src.bias is not None:
                raise blocks.ExportRefused(f"layer '{_module_name(model, src)}': has a bias, which llama.cpp's "
                                           f"{hp['arch']} graph does not read")
    return hp, t


def _module_name(model, module):
    return next((n for n, m in model.named_modules() if m is module), "?")


def _metadata(w, hp):
    a = hp["arch"]
    w.add("general.architecture", STRING, a)
    w.add("general.name", STRING, str(hp["name"]))
    for key, v in (("context_length", hp["context"]), ("embedding_length", hp["embd"]),
                   ("feed_forward_length", hp["ff"]), ("block_count", hp["blocks"]),
                   ("attention.head_count", hp["heads"]), ("attention.head_count_kv", hp["kv_heads"]),
                   ("rope.dimension_count", hp["head_dim"])):
        w.add(f"{a}.{key}", UINT32, int(v))
    if hp["head_dim"] * hp["heads"] != hp["embd"]:
        w.add(f"{a}.attention.key_length", UINT32, int(hp["head_dim"]))
        w.add(f"{a}.attention.value_length", UINT32, int(hp["head_dim"]))
    w.add(f"{a}.attention.layer_norm_rms_epsilon", FLOAT32, hp["eps"])
    w.add(f"{a}.rope.freq_base", FLOAT32, hp["theta"])


def _entry(name, src, perm, model):
    """(ggml type, shape, bytes, how) of one tensor."""
    if isinstance(src, torch.nn.Linear):
        src = src.weight
    if isinstance(src, torch.Tensor):
        t = src.detach()
        if perm is not None:
            t = t[torch.from_numpy(perm(t.shape[0]))]
        gtype, raw = blocks.float_tensor(t, name)
        return gtype, tuple(t.shape), raw, "float weights" if t.dim() > 1 else "float"
    layer = src
    lname = _module_name(model, layer)
    n, k = layer.weight_shape[0], layer.cols
    qk = blocks.block_length(layer)
    if k % qk:
        # the codes cannot form whole blocks: the deploy weights, exactly, in F32
        if layer._buffers.get("smooth") is not None or layer.aspec is not None:
            blocks.layer_blocks(layer, lname)  # raises the same refusal as any layer
        w = layer.weight_dequant().float().reshape(n, k)
        if perm is not None:
            w = w[torch.from_numpy(perm(n))]
        return F32, (n, k), w.contiguous().numpy().tobytes(), \
            f"F32: K = {k} is not a multiple of {qk} ({lname}, {layer.wspec.label()}, deploy weights written exactly)"
    gtype, rows = blocks.layer_blocks(layer, lname)
    if perm is not None:
        rows = rows[perm(n)]
    return gtype, (n, k), np.ascontiguousarray(rows).tobytes(), f"from {lname} ({layer.wspec.label()}, " \
                                                                 f"{layer.algorithm})"


def export_model(model, tokenizer, out, progress=True):
    """Writes ``model`` (a lowbit.models.llama2c.Llama or lowbit.models.hf_llama
    LlamaForCausalLM, float or converted) with ``tokenizer`` as a GGUF file. Returns a
    report: {"path", "bytes", "seconds", "tensors": [(name, type, shape, why)]}."""
    from lowbit.models.hf_llama import LlamaForCausalLM
    from lowbit.models.llama2c import Llama, Tokenizer
    t0 = time.perf_counter()
    if isinstance(model, Llama):
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer: a llama2.c model needs its lowbit.models.llama2c.Tokenizer, got "
                            f"{type(tokenizer).__name__}")
        hp, plan = _llama2c_plan(model)
        vocab = toks.llama2c_vocab(tokenizer)
    elif isinstance(model, LlamaForCausalLM):
        from lowbit.tokenizers import HFTokenizer
        hp, plan = _hf_plan(model)
        if isinstance(tokenizer, Tokenizer):  # a SentencePiece-style vocabulary (e.g. a converted llama2.c model)
            vocab = toks.llama2c_vocab(tokenizer)
        elif isinstance(tokenizer, HFTokenizer):
            vocab = toks.hf_vocab(tokenizer, model.config.architecture)
        else:
            raise TypeError(f"tokenizer: expected a lowbit.tokenizers.HFTokenizer (tokenizer.json) or a "
                            f"lowbit.models.llama2c.Tokenizer, got {type(tokenizer).__name__}")
    else:
        raise TypeError(f"model: expected a lowbit llama2.c Llama or hf_llama LlamaForCausalLM, got "
                        f"{type(model).__name__}")
    w = GGUFWriter()
    _metadata(w, hp)
    for key, kind, value in vocab:
        w.add(key, kind, value)
    report, counts = [], {}
    for name, src, perm in tqdm(plan, desc="gguf: encode", disable=not progress, leave=False):
        gtype, shape, raw, why = _entry(name, src, perm, model)
        w.add_tensor(name, shape, gtype, raw)
        report.append((name, TYPE_NAMES[gtype], shape, why))
        if len(shape) == 2:
            counts[TYPE_NAMES[gtype]] = counts.get(TYPE_NAMES[gtype], 0) + int(np.prod(shape))
        log.info("gguf: %s %s %s: %s", name, TYPE_NAMES[gtype], list(shape), why)
    quant = {k: v for k, v in counts.items() if k not in ("F32", "F16")}
    main = max(quant, key=quant.get) if quant else ("F16" if counts.get("F16") else "F32")
    w.add("general.file_type", UINT32, _FILE_TYPE[main])
    bar = tqdm(total=sum(t[3] for t in w.tensors), desc="gguf: write", unit="B", unit_scale=True,
               disable=not progress, leave=False)
    size = w.write(out, progress=lambda _name, nbytes: bar.update(nbytes))
    bar.close()
    return {"path": str(out), "bytes": size, "seconds": time.perf_counter() - t0, "file_type": main,
            "tensors": report}


def export_gguf(source, out, tokenizer=None, progress=True):
    """GGUF file ``out`` from ``source``: a folder (a Hugging Face Llama/Mistral/Qwen2
    folder, float or saved by ``lowbit quantize`` / save_pretrained; its tokenizer.json is
    used), a llama2.c checkpoint file (``tokenizer``: its tokenizer .bin) or a model object
    (``tokenizer``: its tokenizer object). Returns the report of export_model."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            from lowbit.cli import load_folder
            model, tok, _ = load_folder(p)
            if tokenizer is not None:
                raise ValueError("tokenizer: a folder carries its own tokenizer.json; pass tokenizer=None")
            tokenizer = tok
        elif p.is_file():
            from lowbit.models.llama2c import load_llama2c, load_tokenizer
            if tokenizer is None:
                raise ValueError(f"tokenizer: {p} is a llama2.c checkpoint; give its tokenizer .bin file")
            model = load_llama2c(p)
            tokenizer = load_tokenizer(tokenizer, model.cfg.vocab_size)
        else:
            raise FileNotFoundError(f"{p}: no such folder or file")
    else:
        model = source
        if tokenizer is None:
            raise ValueError("tokenizer: required with a model object")
    return export_model(model, tokenizer, out, progress=progress)


def render_report(rep):
    lines = [f"wrote {rep['path']}: {rep['bytes']:,} bytes, mostly {rep['file_type']}, {rep['seconds']:.1f} s"]
    for name, gtype, shape, why in rep["tensors"]:
        if len(shape) == 2:
            lines.append(f"  {name:<28} {gtype:<5} {str(list(shape)):<12} {why}")
    ones = sum(1 for t in rep["tensors"] if len(t[2]) == 1)
    lines.append(f"  (+ {ones} norm vectors in F32)")
    return "\n".join(lines)

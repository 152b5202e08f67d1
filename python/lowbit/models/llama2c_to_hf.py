"""llama2.c checkpoints as Hugging Face Llama folders (config.json + model.safetensors):
the weights part of the converter.

llama2.c rotates consecutive pairs of a head's dimensions (2i, 2i + 1); `transformers`'
Llama rotates dimension i with i + head_dim / 2. The rows of wq and wk are permuted
within each head so that the HF model computes the same attention: HF row j takes
llama2.c row 2j and HF row j + head_dim / 2 takes row 2j + 1.
"""


def _rotate_half_rows(w, heads):
    """[heads * head_dim, dim] in llama2.c's pair order -> rotate-half order."""
    rows, cols = w.shape
    d = rows // heads
    return w.reshape(heads, d // 2, 2, cols).transpose(1, 2).reshape(rows, cols).contiguous()


def llama2c_to_hf(model):
    """(config.json dict, {HF tensor name: tensor}) of a lowbit.models.llama2c.Llama."""
    c = model.cfg
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": c.dim, "intermediate_size": c.hidden_dim, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "vocab_size": c.vocab_size,
        "max_position_embeddings": c.seq_len, "rms_norm_eps": float(model.norm.eps), "rope_theta": 10000.0,
        "rope_scaling": None, "tie_word_embeddings": bool(c.shared_classifier), "attention_bias": False,
        "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
    }
    sd = {"model.embed_tokens.weight": model.tok_embeddings.weight, "model.norm.weight": model.norm.weight}
    if not c.shared_classifier:
        sd["lm_head.weight"] = model.output.weight
    for i, b in enumerate(model.layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = _rotate_half_rows(b.attention.wq.weight, c.n_heads)
        sd[p + "self_attn.k_proj.weight"] = _rotate_half_rows(b.attention.wk.weight, c.n_kv_heads)
        sd[p + "self_attn.v_proj.weight"] = b.attention.wv.weight
        sd[p + "self_attn.o_proj.weight"] = b.attention.wo.weight
        sd[p + "mlp.gate_proj.weight"] = b.feed_forward.w1.weight
        sd[p + "mlp.down_proj.weight"] = b.feed_forward.w2.weight
        sd[p + "mlp.up_proj.weight"] = b.feed_forward.w3.weight
        sd[p + "input_layernorm.weight"] = b.attention_norm.weight
        sd[p + "post_attention_layernorm.weight"] = b.ffn_norm.weight
    return config, {k: v.detach().contiguous() for k, v in sd.items()}



def convert_llama2c_folder(checkpoint, tokenizer, out_dir):
    """Writes a llama2.c checkpoint and its tokenizer as a Hugging Face Llama folder
    (config.json, model.safetensors, tokenizer.json, tokenizer_config.json); returns the
    file names. Each file is written atomically, config.json last."""
    import json
    from pathlib import Path

    import torch

    from lowbit import _C
    from lowbit.models.convert_llama2c import llama2c_tokenizer_to_hf
    from lowbit.models.llama2c import load_llama2c

    model = load_llama2c(checkpoint)
    config, tensors = llama2c_to_hf(model)
    tok_json, tok_config = llama2c_tokenizer_to_hf(tokenizer, config["vocab_size"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.ops.lowbit.save_safetensors(str(out / "model.safetensors"), list(tensors), list(tensors.values()),
                                      ["format"], ["pt"], True)

    def put(name, obj):
        _C.write_file_atomic(str(out / name), (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))

    put("tokenizer.json", tok_json)
    put("tokenizer_config.json", tok_config)
    put("config.json", config)
    return ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"]

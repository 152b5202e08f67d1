"""GGUF export (python/lowbit/export/): the container read back by an independent reader,
exactness of the blocks against lowbit's deploy weights, refusals, and real llama.cpp
(the npm package node-llama-cpp) running the exported stories260K."""
import copy
import json
import math
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import lowbit
from lowbit.export import gguf_blocks, gguf_writer as gw
from lowbit.export.gguf_blocks import ExportRefused

LLAMACPP_VERSION = "3.21.1"
LLAMACPP_DIR = Path(os.environ.get("LOWBIT_LLAMACPP_DIR", Path.home() / ".cache" / "lowbit-llamacpp"))


# ---- an independent reader (the GGUF v3 layout, nothing shared with the writer) -----
def read_gguf(path):
    raw = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, raw, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def string():
        nonlocal pos
        n = take("Q")
        s = raw[pos:pos + n].decode("utf-8")
        pos += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(kind):
        if kind == 8:
            return string()
        if kind == 9:
            elem, n = take("I"), take("Q")
            return [value(elem) for _ in range(n)]
        return take(scalar[kind])

    assert raw[:4] == b"GGUF"
    pos = 4
    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    kv, kinds = {}, {}
    for _ in range(n_kv):
        key = string()
        kind = take("I")
        kinds[key] = kind
        kv[key] = value(kind)
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        gtype, offset = take("I"), take("Q")
        infos.append((name, tuple(reversed(dims)), gtype, offset))
    align = kv.get("general.alignment", 32)
    data_start = pos + (-pos) % align
    tensors = {}
    sizes = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34), 12: (256, 144), 14: (256, 210)}
    for name, shape, gtype, offset in infos:
        blk, size = sizes[gtype]
        nbytes = int(np.prod(shape)) // blk * size
        assert offset % align == 0
        tensors[name] = (shape, gtype, raw[data_start + offset:data_start + offset + nbytes])
    last = max(infos, key=lambda t: t[3]) if infos else None
    return {"version": version, "kv": kv, "kinds": kinds, "tensors": tensors, "infos": infos,
            "data_start": data_start, "size": len(raw), "last": last}


def test_container_header_metadata_kinds_alignment_offsets(tmp_path):
    w = gw.GGUFWriter()
    w.add("u8", gw.UINT8, 200)
    w.add("i8", gw.INT8, -5)
    w.add("u16", gw.UINT16, 60000)
    w.add("i16", gw.INT16, -30000)
    w.add("u32", gw.UINT32, 4_000_000_000)
    w.add("i32", gw.INT32, -2_000_000_000)
    w.add("f32", gw.FLOAT32, 1.5)
    w.add("b", gw.BOOL, True)
    w.add("s", gw.STRING, "héllo ▁")
    w.add("u64", gw.UINT64, 2 ** 40)
    w.add("i64", gw.INT64, -2 ** 40)
    w.add("f64", gw.FLOAT64, math.pi)
    w.add("arr_s", gw.ARRAY, (gw.STRING, ["a", "", "▁b"]))
    w.add("arr_f", gw.ARRAY, (gw.FLOAT32, [0.5, -2.0]))
    w.add("arr_i", gw.ARRAY, (gw.INT32, [1, -1, 6]))
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(5, dtype=np.float16)
    w.add_tensor("a", a.shape, gw.F32, a.tobytes())
    w.add_tensor("b", b.shape, gw.F16, b.tobytes())
    w.add_tensor("q", (1, 64), gw.Q8_0, lambda: bytes(range(68)))
    size = w.write(tmp_path / "x.gguf")
    r = read_gguf(tmp_path / "x.gguf")
    assert r["version"] == 3 and r["size"] == size
    kv = r["kv"]
    assert (kv["u8"], kv["i8"], kv["u16"], kv["i16"], kv["u32"], kv["i32"]) == (200, -5, 60000, -30000, 4_000_000_000,
                                                                                -2_000_000_000)
    assert kv["f32"] == 1.5 and kv["b"] is True and kv["s"] == "héllo ▁" and kv["f64"] == math.pi
    assert (kv["u64"], kv["i64"]) == (2 ** 40, -2 ** 40) and kv["general.alignment"] == 32
    assert kv["arr_s"] == ["a", "", "▁b"] and kv["arr_f"] == [0.5, -2.0] and kv["arr_i"] == [1, -1, 6]
    assert r["kinds"]["arr_s"] == gw.ARRAY and r["kinds"]["general.alignment"] == gw.UINT32
    assert [i[3] for i in r["infos"]] == [0, 32, 64]  # 24 bytes -> 32, 10 -> 32
    assert r["data_start"] % 32 == 0
    assert np.array_equal(np.frombuffer(r["tensors"]["a"][2], np.float32).reshape(2, 3), a)
    assert r["tensors"]["a"][0] == (2, 3) and r["tensors"]["q"][0] == (1, 64)
    assert r["tensors"]["q"][2] == bytes(range(68))
    assert size == r["data_start"] + 64 + 68 + (-68) % 32


def test_writer_errors_and_atomic_write(tmp_path):
    w = gw.GGUFWriter()
    with pytest.raises(ValueError, match="given twice"):
        w.add("general.alignment", gw.UINT32, 64)
    with pytest.raises(ValueError, match="multiple of 32 for Q4_0"):
        w.add_tensor("t", (2, 40), gw.Q4_0, b"")
    (tmp_path / "old.gguf").write_bytes(b"previous")
    w.add_tensor("t", (2, 2), gw.F32, b"\0" * 12)  # 12 bytes instead of 16: refused while writing
    with pytest.raises(ValueError, match="12 bytes, expected 16"):
        w.write(tmp_path / "old.gguf")
    assert (tmp_path / "old.gguf").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.gguf"]  # no temporary file left


# ---- models ------------------------------------------------------------------------
def _stories(shared_data):
    from lowbit.eval import lm
    return lm.load_stories260k()


def _quantized(shared_data, cfg_name, calib=16):
    from lowbit.eval import lm
    model, tok = lm.load_stories260k()
    cfg = getattr(lowbit, cfg_name) if isinstance(cfg_name, str) else copy.deepcopy(cfg_name)
    cal = lm.token_batches(tok, lm.CALIB_RANGE, limit=calib)
    cfg["batch_num"] = len(cal)
    cfg["skip_layers"] = {"output"}
    lowbit.quantize(model, cfg)
    lm.calibrate(model, cal)
    lowbit.convert(model)
    return model, tok


_CACHE = {}


def quantized(shared_data, cfg_name):
    if cfg_name not in _CACHE:
        _CACHE[cfg_name] = _quantized(shared_data, cfg_name)
    return _CACHE[cfg_name]


def test_fp16_scale_configs_give_fp16_scales(shared_data):
    for name in ("GGUF_Q8_0_CFG", "GGUF_Q4_0_GPTQ_CFG"):
        model, _ = quantized(shared_data, name)
        layer = model.layers[0].attention.wq
        s = layer.w_scale
        assert s.shape == (64, 2) and torch.equal(s.half().float(), s), name
        assert layer.wspec.scale_dtype == "float16"
        if name == "GGUF_Q4_0_GPTQ_CFG":  # ggml's Q4_0 rule d = max / -8: negative where the max is positive
            assert layer.wspec.scale_rule == "signed_max" and (s < 0).any() and (s > 0).any()


def _check_exact(model, path, permuted=None):
    r = read_gguf(path)
    from lowbit.modules.deploy import DeployLayer
    names = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output", "w1": "ffn_gate",
             "w2": "ffn_down", "w3": "ffn_up"}
    seen = {}
    for mname, m in model.named_modules():
        if not isinstance(m, DeployLayer):
            continue
        i, leaf = mname.split(".")[1], mname.split(".")[-1]
        shape, gtype, raw = r["tensors"][f"blk.{i}.{names[leaf]}.weight"]
        got = gguf_blocks.dequantize(gtype, raw, shape)
        want = m.weight_dequant().float().numpy()
        assert got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes(), mname  # bit for bit
        seen[gw.TYPE_NAMES[gtype]] = seen.get(gw.TYPE_NAMES[gtype], 0) + 1
    return r, seen


def test_q8_0_and_q4_0_blocks_equal_deploy_weights_bit_for_bit(shared_data, tmp_path):
    for name, qtype in (("GGUF_Q8_0_CFG", "Q8_0"), ("GGUF_Q4_0_GPTQ_CFG", "Q4_0"), ("GGUF_Q4_0_CFG", "Q4_0")):
        model, tok = quantized(shared_data, name)
        rep = lowbit.export_gguf(model, tmp_path / f"{qtype}.gguf", tokenizer=tok, progress=False)
        r, seen = _check_exact(model, tmp_path / f"{qtype}.gguf")
        if qtype == "Q4_0":  # signed block scales (ggml's d = max / -8), written as they are
            _, _, raw = r["tensors"]["blk.0.attn_q.weight"]
            d = np.frombuffer(raw, np.uint8).reshape(-1, 18)[:, :2].copy().view(np.float16).astype(np.float32)
            want = model.layers[0].attention.wq.w_scale.numpy().reshape(-1)
            assert np.array_equal(d.reshape(-1), want) and (d < 0).any() and (d > 0).any()
        assert seen == {qtype: 30, "F32": 5}  # w2 (K = 172) in F32, its deploy weights
        assert r["kv"]["general.file_type"] == {"Q8_0": 7, "Q4_0": 2}[qtype]
        why = {n: w for n, _, _, w in rep["tensors"]}
        assert "K = 172 is not a multiple of 32" in why["blk.0.ffn_down.weight"]
        assert "output.weight" not in r["tensors"]  # tied: llama.cpp reads token_embd
        assert r["kv"]["llama.block_count"] == 5 and r["kv"]["llama.attention.head_count_kv"] == 4
        assert r["kv"]["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]


def test_q4_1_from_asymmetric_int4_when_exact(shared_data, tmp_path):
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(64, 8, bias=False))
    cfg = {"quant_cfg": {"weights": {"type": "int4", "symmetric": False, "strategy": "group", "group_size": 32,
                                     "scale_dtype": "float16"}}}
    with torch.no_grad():  # weights on a coarse grid: scales and minima that are fp16 values
        lin[0].weight.copy_(torch.randint(-8, 8, (8, 64)).float() * 0.25)
        lin[0].weight[:, 0::32] = -2.0  # each group spans [-2, 1.75]: scale 0.25, minimum -2
        lin[0].weight[:, 1::32] = 1.75
    lowbit.quantize(lin, cfg)
    lowbit.convert(lin)
    gtype, rows = gguf_blocks.layer_blocks(lin[0], "0")
    assert gtype == gw.Q4_1
    got = gguf_blocks.dequantize(gtype, np.ascontiguousarray(rows).tobytes(), (8, 64))
    assert np.array_equal(got, lin[0].weight_dequant().float().numpy())
    lin2 = torch.nn.Sequential(torch.nn.Linear(64, 8, bias=False))
    with torch.no_grad():
        lin2[0].weight.copy_(torch.randn(8, 64) * 0.1 + 0.03)
    lowbit.quantize(lin2, cfg)
    lowbit.convert(lin2)
    with pytest.raises(ExportRefused, match=r"layer '0': Q4_1's minimum .* is not a float16 value"):
        gguf_blocks.layer_blocks(lin2[0], "0")


def _one_layer(cfg, calib=True):
    lin = torch.nn.Sequential(torch.nn.Linear(64, 16, bias=False))
    lowbit.quantize(lin, cfg)
    if calib:
        for _ in range(cfg.get("batch_num", 1)):
            lin(torch.randn(32, 64))
    lowbit.convert(lin)
    return lin[0]


def test_refusals_name_the_layer_and_reason():
    w32 = {"type": "int4", "strategy": "group", "group_size": 32}
    with pytest.raises(ExportRefused, match=r"layer 'x': scale of row 0, block 0 .* is not a float16 value; "
                                            r"quantize with weights 'scale_dtype': 'float16'"):
        gguf_blocks.layer_blocks(_one_layer({"quant_cfg": {"weights": w32}}), "x")
    awq = _one_layer({"quant_cfg": {"weights": {**w32, "scale_dtype": "float16"}}, "algorithm": {"awq": {}}})
    assert torch.equal(awq.w_scale.half().float(), awq.w_scale)  # AWQ searched the fp16 grid
    with pytest.raises(ExportRefused, match=r"layer 'x': it divides its inputs by per-channel factors"):
        gguf_blocks.layer_blocks(awq, "x")
    with pytest.raises(ExportRefused, match=r"layer 'x': format float8_e4m3fn has no exact GGUF type"):
        gguf_blocks.layer_blocks(_one_layer({"quant_cfg": {"weights": {"type": "float8_e4m3fn"}}}), "x")
    w8a8 = {"quant_cfg": {"weights": {"type": "int8", "strategy": "channel", "scale_dtype": "float16"},
                          "inputs": {"type": "int8", "strategy": "token"}}}
    with pytest.raises(ExportRefused, match=r"layer 'x': its inputs are quantized"):
        gguf_blocks.layer_blocks(_one_layer(w8a8), "x")
    asym8 = {"quant_cfg": {"weights": {"type": "int8", "symmetric": False, "scale_dtype": "float16"}}}
    with pytest.raises(ExportRefused, match=r"layer 'x': asymmetric int8 has no GGUF type"):
        gguf_blocks.layer_blocks(_one_layer(asym8), "x")


def test_export_refuses_whole_model_without_writing(shared_data, tmp_path):
    model, tok = _quantized(shared_data, {"quant_cfg": {"weights": {"type": "int4", "strategy": "group",
                                                                     "group_size": 32}}}, calib=1)
    with pytest.raises(ExportRefused, match=r"layer 'layers.0.attention.wq': scale of row"):
        lowbit.export_gguf(model, tmp_path / "m.gguf", tokenizer=tok, progress=False)
    assert not any(tmp_path.iterdir())


def test_cli_exports_a_quantized_hf_folder(shared_data, tmp_path):
    """convert-llama2c -> quantize (GGUF_Q8_0_CFG) -> export: q/k rows back in llama.cpp's
    order, every block equal to the llama2.c-side deploy weights of the same codes."""
    from lowbit.cli import main
    m = shared_data / "models"
    calib = tmp_path / "calib.txt"
    from lowbit.eval import lm
    calib.write_text("\n\n".join(lm.paragraphs()[1000:1004]), encoding="utf-8")
    assert main(["convert-llama2c", str(m / "stories260K.bin"), str(m / "tok512.bin"), "--out", str(tmp_path / "hf")]) == 0
    assert main(["quantize", str(tmp_path / "hf"), "--config", "GGUF_Q8_0_CFG", "--calib", str(calib), "--samples", "4",
                 "--out", str(tmp_path / "q")]) == 0
    assert main(["export", str(tmp_path / "q"), "--format", "gguf", "--out", str(tmp_path / "q.gguf")]) == 0
    r = read_gguf(tmp_path / "q.gguf")
    assert r["tensors"]["blk.0.attn_q.weight"][1] == gw.Q8_0 and r["tensors"]["blk.0.ffn_down.weight"][1] == gw.F32
    # the HF permutation undone: attn_q rows equal MIN-MAX Q8_0 of llama2.c's own wq rows
    model, tok = _stories(shared_data)
    wq = model.layers[0].attention.wq.weight.detach()
    shape, gtype, raw = r["tensors"]["blk.0.attn_q.weight"]
    got = torch.from_numpy(gguf_blocks.dequantize(gtype, raw, shape))
    s, _ = lowbit.compute_scales(wq, "int8", "group", 32, scale_dtype="float16")
    want = lowbit.fake_quant(wq, "int8", "group", 32, scale=s, offset=torch.zeros_like(s, dtype=torch.int32))
    assert torch.equal(got, want)
    assert main(["export", str(tmp_path / "q"), "--format", "onnx", "--out", str(tmp_path / "x")]) != 0


# ---- real llama.cpp ----------------------------------------------------------------------
def _llamacpp():
    """The folder holding node_modules/node-llama-cpp (installed once, reused)."""
    ci = os.environ.get("CI") == "true"
    if (LLAMACPP_DIR / "node_modules" / "node-llama-cpp" / "package.json").exists():
        return LLAMACPP_DIR
    if shutil.which("node") is None or shutil.which("npm") is None:
        if ci:
            pytest.fail("node/npm not found (CI=true: llama.cpp verification is required)")
        pytest.skip("node/npm not found: llama.cpp verification skipped")
    LLAMACPP_DIR.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["npm", "init", "-y"], cwd=LLAMACPP_DIR, check=True, capture_output=True, timeout=60)
        subprocess.run(["npm", "install", "-E", "--omit=optional", f"node-llama-cpp@{LLAMACPP_VERSION}",
                        f"@node-llama-cpp/linux-x64@{LLAMACPP_VERSION}"], cwd=LLAMACPP_DIR, check=True,
                       capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as e:
        if ci:
            pytest.fail(f"npm install of node-llama-cpp {LLAMACPP_VERSION} failed: {e}")
        pytest.skip(f"npm install of node-llama-cpp {LLAMACPP_VERSION} failed (no registry?): {e}")
    return LLAMACPP_DIR


def run_llamacpp(gguf, texts, prompt="Once upon a time", greedy=8):
    folder = _llamacpp()
    script = folder / "lowbit_gguf_eval.mjs"
    shutil.copyfile(Path(__file__).with_name("gguf_llamacpp.mjs"), script)
    job = folder / f"job-{os.getpid()}.json"
    job.write_text(json.dumps({"model": str(gguf), "texts": texts, "prompt": prompt, "greedy": greedy}))
    try:
        out = subprocess.run(["node", str(script), str(job)], cwd=folder, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        job.unlink()
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def llamacpp_perplexity(res):
    return math.exp(sum(res["nll"]) / sum(len(t) - 1 for t in res["tokens"]))


@torch.no_grad()
def lowbit_greedy(model, ids, n):
    ids = list(ids)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids


PARAGRAPHS = 20


@pytest.mark.parametrize("cfg_name", [None, "GGUF_Q8_0_CFG", "GGUF_Q4_0_GPTQ_CFG"])
def test_llamacpp_runs_the_export_with_lowbits_perplexity(shared_data, tmp_path, cfg_name):
    from lowbit.eval import lm
    model, tok = _stories(shared_data) if cfg_name is None else quantized(shared_data, cfg_name)
    path = tmp_path / "m.gguf"
    lowbit.export_gguf(model, path, tokenizer=tok, progress=False)
    texts = lm.paragraphs()[:PARAGRAPHS]
    res = run_llamacpp(path, texts)
    ours = [tok.encode(t)[:lm.MAX_TOKENS] for t in texts]
    assert res["tokens"] == ours  # llama.cpp's tokenizer: the same ids as llama2.c's
    ppl_cpp = llamacpp_perplexity(res)
    ppl_ours = lm.perplexity(model, [torch.tensor([t]) for t in ours])
    assert abs(ppl_cpp / ppl_ours - 1) < 0.005, (ppl_cpp, ppl_ours)
    want = lowbit_greedy(model, res["prompt"], 8)[len(res["prompt"]):]
    assert res["greedy"][:4] == want[:4], (res["greedy"], want)


# Qwen2's pre-tokenizer split (llama.cpp's "qwen2": one digit per piece), then GPT-2 bytes
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s"),
                ("r", "e"), ("a", "n"), ("Ġ", "w"), ("o", "u"), ("e", "d"), ("Ġa", "n"), ("Ġan", "d"), ("i", "t"),
                ("Ġ", "c"), ("a", "t"), ("Ġc", "at"), ("o", "w"), ("Ġs", "at"), ("in", "g"), ("Ġ", "o"), ("Ġo", "n")]


def _byte_level_bpe(tmp_path):
    """A Qwen2-style tokenizer.json (byte-level BPE, Qwen2's split, <|endoftext|>, no BOS)."""
    from lowbit.tokenizers import load_hf_tokenizer
    from lowbit.tokenizers.pretokenizers import BYTE_TO_CHAR
    vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
    for a, b in QWEN2_MERGES:
        vocab[a + b] = len(vocab)
    eot = {"id": len(vocab), "content": "<|endoftext|>", "single_word": False, "lstrip": False, "rstrip": False,
           "normalized": False, "special": True}
    spec = {"version": "1.0", "added_tokens": [eot], "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                               "use_regex": False},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "byte_fallback": False,
                      "vocab": vocab, "merges": [f"{a} {b}" for a, b in QWEN2_MERGES]}}
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "bos_token": None}))
    return load_hf_tokenizer(folder), len(vocab) + 1


def test_llamacpp_runs_a_qwen2_export_with_a_byte_level_bpe_tokenizer(tmp_path):
    """A random Qwen2 model (attention biases, grouped-query attention) with a byte-level
    BPE tokenizer, exported as F32: llama.cpp tokenizes like lowbit and scores every
    token as lowbit's forward does."""
    from lowbit.models.hf_llama import HFLlamaConfig, LlamaForCausalLM
    tok, vocab = _byte_level_bpe(tmp_path)
    cfg = HFLlamaConfig.from_dict({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
                                   "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                                   "num_key_value_heads": 2, "vocab_size": vocab, "rms_norm_eps": 1e-6,
                                   "rope_theta": 1000000.0, "max_position_embeddings": 512,
                                   "tie_word_embeddings": False})
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "embed" in name else 0.15))
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    path = tmp_path / "qwen2.gguf"
    lowbit.export_gguf(model, path, tokenizer=tok, progress=False)
    texts = ["The cat sat on the mat, and then it went out.", "In 2024 the cats ran 12 miles!",
             "She's waiting: 3 apples and 45 pears.\nNew line here."]
    res = run_llamacpp(path, texts, prompt="The cat", greedy=4)
    assert res["tokens"] == [tok.encode(t) for t in texts]  # no BOS on either side
    with torch.no_grad():
        for ids, nll_cpp in zip(res["tokens"], res["nll"]):
            logp = torch.log_softmax(model(torch.tensor([ids]))[0, :-1].double(), -1)
            nll = -float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum())
            assert abs(nll_cpp / nll - 1) < 1e-3, (nll_cpp, nll)
    assert res["greedy"] == lowbit_greedy(model, res["prompt"], 4)[len(res["prompt"]):]


@pytest.mark.parametrize("cfg_name", [None, "GGUF_Q8_0_CFG", "GGUF_Q4_0_GPTQ_CFG"])
def test_llamacpp_runs_a_mistral_export(shared_data, tmp_path, cfg_name):
    """A random Mistral model (grouped-query attention, a sliding window longer than the
    texts, rope_theta 1e6) with the stories260K SentencePiece-style tokenizer, exported as
    F32, Q8_0 and GPTQ Q4_0: llama.cpp (architecture 'llama') tokenizes like lowbit and scores every
    token as lowbit's forward does (F32: within 1e-3 of the NLL; quantized, where llama.cpp
    rounds activations to 8 bits: the perplexity within 0.5%)."""
    from lowbit.eval import lm
    from lowbit.models.hf_llama import HFLlamaConfig, LlamaForCausalLM
    _, tok = _stories(shared_data)
    cfg = HFLlamaConfig.from_dict({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
                                   "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
                                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
                                   "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "sliding_window": 4096,
                                   "max_position_embeddings": 4096, "tie_word_embeddings": False})
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "embed" in name else 0.12) + ("norm" in name))
    texts = lm.paragraphs()[:6]
    ids = [tok.encode(t)[:lm.MAX_TOKENS] for t in texts]
    if cfg_name is not None:
        qcfg = lowbit.builtin_config(cfg_name)
        qcfg["batch_num"] = 4
        lowbit.quantize(model, qcfg)
        if "GPTQ" in cfg_name:  # (Q8_0's MIN-MAX weights need no data)
            lowbit.calibrate(model, [torch.tensor([t]) for t in ids[:4]])
        lowbit.convert(model)
    path = tmp_path / "mistral.gguf"
    lowbit.export_gguf(model, path, tokenizer=tok, progress=False)
    meta = read_gguf(path)
    assert meta["kv"]["general.architecture"] == "llama" and meta["kv"]["llama.attention.head_count_kv"] == 2
    res = run_llamacpp(path, texts)
    assert res["tokens"] == ids
    with torch.no_grad():
        nll_ours = []
        for t in ids:
            logp = torch.log_softmax(model(torch.tensor([t]))[0, :-1].double(), -1)
            nll_ours.append(-float(logp.gather(1, torch.tensor(t[1:])[:, None]).sum()))
    if cfg_name is None:
        for a, b in zip(res["nll"], nll_ours):
            assert abs(a / b - 1) < 1e-3, (a, b)
    else:
        ppl_ours = math.exp(sum(nll_ours) / sum(len(t) - 1 for t in ids))
        assert abs(llamacpp_perplexity(res) / ppl_ours - 1) < 0.005, (llamacpp_perplexity(res), ppl_ours)
    assert res["greedy"][:4] == lowbit_greedy(model, res["prompt"], 4)[len(res["prompt"]):][:4]


def test_an_hf_model_needs_a_tokenizer_object_lowbit_knows(tmp_path):
    from lowbit.models.hf_llama import HFLlamaConfig, LlamaForCausalLM
    cfg = HFLlamaConfig.from_dict({"architectures": ["MistralForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
                                   "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 16})
    with pytest.raises(TypeError, match=r"tokenizer: expected a lowbit\.tokenizers\.HFTokenizer \(tokenizer\.json\) "
                                        r"or a lowbit\.models\.llama2c\.Tokenizer, got dict"):
        lowbit.export_gguf(LlamaForCausalLM(cfg), tmp_path / "x.gguf", tokenizer={}, progress=False)
    assert not (tmp_path / "x.gguf").exists()


@torch.no_grad()
def _perplexity_of(model, ids):
    """lowbit's perplexity of token lists (each scored after its first token)."""
    nll = 0.0
    for t in ids:
        logp = torch.log_softmax(model(torch.tensor([t]))[0, :-1].double(), -1)
        nll -= float(logp.gather(1, torch.tensor(t[1:])[:, None]).sum())
    return math.exp(nll / sum(len(t) - 1 for t in ids))


def _random_mistral(width, ffn, seed, std):
    from lowbit.models.hf_llama import HFLlamaConfig, LlamaForCausalLM
    cfg = HFLlamaConfig.from_dict({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
                                   "hidden_size": width, "intermediate_size": ffn, "num_hidden_layers": 2,
                                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
                                   "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "sliding_window": 4096,
                                   "max_position_embeddings": 4096, "tie_word_embeddings": False})
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "embed" in name else std) + ("norm" in name))
    return model


@pytest.mark.parametrize("cfg_name, qtype, sc_max, file_type", [("GGUF_Q4_K_GPTQ_CFG", "Q4_K", 63, 14),
                                                                  ("GGUF_Q6_K_CFG", "Q6_K", 127, 18)])
def test_k_quant_blocks_equal_deploy_weights_and_run_in_llamacpp(shared_data, tmp_path, cfg_name, qtype, sc_max,
                                                                 file_type):
    """llama.cpp's K-quant grids on a random Mistral-shaped model whose K are 256 and 512:
    GPTQ on Q4_K's (GGUF_Q4_K_GPTQ_CFG), MIN-MAX int6 on Q6_K's (GGUF_Q6_K_CFG). Every
    quantized projection is written in that type, its blocks decode (by ggml's rules) to
    lowbit's deploy weights bit for bit, and llama.cpp's perplexity of the file is lowbit's
    within 0.5%, with the same greedy tokens."""
    from lowbit.eval import lm
    _, tok = _stories(shared_data)
    model = _random_mistral(256, 512, seed=2, std=0.06)
    texts = lm.paragraphs()[:6]
    ids = [tok.encode(t)[:lm.MAX_TOKENS] for t in texts]
    cfg = lowbit.builtin_config(cfg_name)
    cfg["batch_num"] = 4
    lowbit.quantize(model, cfg)
    if "GPTQ" in cfg_name:
        lowbit.calibrate(model, [torch.tensor([t]) for t in ids[:4]])
    lowbit.convert(model)
    layer = model.model.layers[0].mlp.down_proj
    d, sc = torch.ops.lowbit.split_superblock_scales(layer.w_scale.reshape(256, -1), sc_max)
    assert d.shape == (256, 2) and int(sc.min()) >= 1 and int(sc.max()) == sc_max
    path = tmp_path / "k.gguf"
    rep = lowbit.export_gguf(model, path, tokenizer=tok, progress=False)
    r = read_gguf(path)
    assert r["kv"]["general.file_type"] == file_type
    types = {n: gw.TYPE_NAMES[t] for n, (shape, t, _) in r["tensors"].items() if n.startswith("blk.") and len(shape) == 2}
    assert sorted(set(types.values())) == [qtype], types
    assert len(types) == 14  # 7 projections x 2 blocks (norms are 1-D)
    names = {"v_proj": "attn_v", "o_proj": "attn_output", "gate_proj": "ffn_gate", "up_proj": "ffn_up",
             "down_proj": "ffn_down"}  # (q and k rows are permuted for llama.cpp's rope)
    for i, block in enumerate(model.model.layers):
        for leaf, gname in names.items():
            m = getattr(block.self_attn if hasattr(block.self_attn, leaf) else block.mlp, leaf)
            shape, gtype, raw = r["tensors"][f"blk.{i}.{gname}.weight"]
            got = gguf_blocks.dequantize(gtype, raw, shape)
            want = m.weight_dequant().float().numpy()
            assert got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes(), (i, leaf)
    why = {n: w for n, _, _, w in rep["tensors"]}
    assert cfg_name.endswith("_CFG") and f"{qtype.lower().replace('_', '')}-scale" in why["blk.0.ffn_down.weight"]
    res = run_llamacpp(path, texts)
    assert res["tokens"] == ids
    ppl_ours = _perplexity_of(model, ids)
    assert abs(llamacpp_perplexity(res) / ppl_ours - 1) < 0.005, (llamacpp_perplexity(res), ppl_ours)
    assert res["greedy"][:4] == lowbit_greedy(model, res["prompt"], 4)[len(res["prompt"]):][:4]


def test_q4_k_layers_of_stories260k_are_written_in_f32_and_off_grid_scales_refused(shared_data, tmp_path):
    """stories260K's K (64, 172) hold no 256-weight super-block: its Q4_K-grid layers are
    written as their deploy weights in F32, each saying why; scales off the grid are
    refused naming the layer, row and super-block."""
    model, tok = quantized(shared_data, "GGUF_Q4_K_GPTQ_CFG")
    rep = lowbit.export_gguf(model, tmp_path / "s.gguf", tokenizer=tok, progress=False)
    why = {n: (t, w) for n, t, _, w in rep["tensors"]}
    assert why["blk.0.attn_q.weight"][1].startswith("F32: K = 64 is not a multiple of 256")
    assert why["blk.0.ffn_down.weight"][1].startswith("F32: K = 172 is not a multiple of 256")
    r, seen = _check_exact(model, tmp_path / "s.gguf")
    assert seen == {"F32": 35}
    from lowbit.modules.deploy import DeployLayer
    for name, m in model.named_modules():  # GPTQ kept every group scale on the grid
        if isinstance(m, DeployLayer):
            d, sc = torch.ops.lowbit.split_superblock_scales(m.w_scale.reshape(m.weight_shape[0], -1), 63)
            assert bool((sc >= 1).all()) and int(sc.max()) == 63, name
    lin = torch.nn.Sequential(torch.nn.Linear(256, 4, bias=False))
    lowbit.quantize(lin, {"quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 32,
                                                     "scale_dtype": "q4_k"}}})
    lowbit.convert(lin)
    with torch.no_grad():
        lin[0].w_scale[2, 3] *= 1.001  # no longer d x an integer
    with pytest.raises(ExportRefused, match=r"layer '0': scales of row 2, super-block 0 are not an fp16 d times "
                                            r"integers 1\.\.63"):
        gguf_blocks.layer_blocks(lin[0], "0")


@pytest.mark.parametrize("scale_dtype, symmetric, qtype", [("float16", True, "Q4_0"), ("float16", False, "Q4_1"),
                                                          ("q4_k", True, "Q4_K")])
def test_int3_layers_are_written_as_4_bit_blocks_exactly(scale_dtype, symmetric, qtype):
    torch.manual_seed(3)
    lin = torch.nn.Sequential(torch.nn.Linear(512, 8, bias=False))
    lowbit.quantize(lin, {"quant_cfg": {"weights": {"type": "int3", "symmetric": symmetric, "strategy": "group",
                                                     "group_size": 32, "scale_dtype": scale_dtype}}})
    lowbit.convert(lin)
    try:
        gtype, rows = gguf_blocks.layer_blocks(lin[0], "0")
    except ExportRefused as e:  # Q4_1: only where the minimum is an fp16 value
        assert qtype == "Q4_1" and "is not a float16 value" in str(e)
        return
    assert gw.TYPE_NAMES[gtype] == qtype
    got = gguf_blocks.dequantize(gtype, np.ascontiguousarray(rows).tobytes(), (8, 512))
    want = lin[0].weight_dequant().float().numpy()
    assert got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes()


def test_a_q4_k_m_like_mix_by_per_layer_overrides_runs_in_llamacpp(shared_data, tmp_path):
    """GPTQ Q4_K with v_proj and down_proj on Q6_K's grid (per-layer overrides, as
    llama.cpp's Q4_K_M mixes do): both types in one file, llama.cpp's perplexity lowbit's
    within 0.5%."""
    from lowbit.eval import lm
    _, tok = _stories(shared_data)
    model = _random_mistral(256, 512, seed=2, std=0.06)
    ids = [tok.encode(t)[:lm.MAX_TOKENS] for t in lm.paragraphs()[:6]]
    cfg = lowbit.GGUF_Q4_K_GPTQ_CFG
    cfg["batch_num"] = 4
    for glob in ("*down_proj", "*v_proj"):
        cfg["quant_cfg"][f"{glob}.weights"] = lowbit.GGUF_Q6_K_CFG["quant_cfg"]["weights"]
    lowbit.quantize(model, cfg)
    lowbit.calibrate(model, [torch.tensor([t]) for t in ids[:4]])
    lowbit.convert(model)
    path = tmp_path / "mix.gguf"
    lowbit.export_gguf(model, path, tokenizer=tok, progress=False)
    r = read_gguf(path)
    types = {n: gw.TYPE_NAMES[t] for n, (shape, t, _) in r["tensors"].items() if n.startswith("blk.") and len(shape) == 2}
    assert {n for n, t in types.items() if t == "Q6_K"} == {f"blk.{i}.{p}.weight" for i in (0, 1)
                                                            for p in ("attn_v", "ffn_down")}
    assert sum(t == "Q4_K" for t in types.values()) == 10
    res = run_llamacpp(path, lm.paragraphs()[:6])
    ppl_ours = _perplexity_of(model, ids)
    assert abs(llamacpp_perplexity(res) / ppl_ours - 1) < 0.005, (llamacpp_perplexity(res), ppl_ours)

"""Hugging Face checkpoint folders: the llama2.c -> HF converter on the real stories260K,
the `lowbit` command (quantize -> eval -> generate) against the in-memory Python path,
quantized folders (sharded, damaged, read without the float folder), and synthetic
Qwen2/Mistral-style folders (biases, GQA, untied bf16 weights, memory mapping)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit import cli
from lowbit.checkpoints import load_hf_model
from lowbit.models.hf_llama import HFLlamaConfig, LlamaForCausalLM
from lowbit.modules.deploy import DeployLinear
from lowbit.pretrained import load_pretrained, save_pretrained
from lowbit.tokenizers import load_hf_tokenizer

ROOT = Path(__file__).resolve().parents[3]
from conftest import run_lowbit  # noqa: E402

CONFIGS = ["INT4_GPTQ_WEIGHT_QUANT_CFG", "INT8_SMOOTHQUANT_CFG", "HIFP8_OFMR_CFG"]
CALIB_SAMPLES, CALIB_SEQLEN = 16, 128


def test_converted_folder_equals_the_llama2c_model(stories_folder):
    folder, _, _ = stories_folder
    from lowbit.eval.lm import EVAL_RANGE, load_stories260k, perplexity, token_batches
    ref, tok = load_stories260k()
    hf = load_hf_model(folder)
    assert [n for n, _ in hf.named_modules()][:6] == ["", "model", "model.embed_tokens", "model.layers",
                                                      "model.layers.0", "model.layers.0.self_attn"]
    hf_tok = load_hf_tokenizer(folder)
    batches = token_batches(tok, EVAL_RANGE)
    for b in batches[:100]:
        text = tok.decode(b[0].tolist())
        assert hf_tok.encode(text, add_bos=True) == tok.encode(text)
    p_ref, p_hf = perplexity(ref, batches), perplexity(hf, batches)
    assert abs(p_hf - p_ref) < 1e-5 * p_ref and abs(p_hf - 4.184) < 5e-4, (p_ref, p_hf)


def _in_memory(folder, calib, name):
    tok = load_hf_tokenizer(folder)
    batches = cli.token_batches(tok, cli.read_samples(calib), CALIB_SAMPLES, CALIB_SEQLEN)
    cfg = lowbit.builtin_config(name)
    cfg["batch_num"] = len(batches)
    model = load_hf_model(folder)
    lowbit.quantize(model, cfg)
    lowbit.calibrate(model, [b[:, :-1] for b in batches])
    return lowbit.convert(model), tok


@pytest.mark.parametrize("name", CONFIGS)
def test_command_quantize_eval_generate_equal_the_python_path(stories_folder, name, tmp_path):
    folder, calib, text = stories_folder
    out = tmp_path / "q"
    stdout, _ = run_lowbit("quantize", folder, "--config", name, "--calib", calib, "--samples", CALIB_SAMPLES,
                           "--seqlen", CALIB_SEQLEN, "--out", out, "--plot", tmp_path / "layers.png",
                           cwd=tmp_path)
    assert re.search(r"model\.layers\.4\.mlp\.down_proj\s", stdout) and "quantized layers" in stdout
    assert (tmp_path / "layers.png").read_bytes()[:4] == b"\x89PNG"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "lowbit"
    assert (out / "tokenizer.json").exists()
    stdout, _ = run_lowbit("eval", out, "--text", text, "--samples", 100, "--quiet")
    ppl_cmd = float(re.search(r"perplexity ([0-9.]+)", stdout).group(1))
    model, tok = _in_memory(folder, calib, name)
    texts = cli.read_samples(text)[:100]
    ppl_mem = cli.perplexity(model, cli.token_batches(tok, texts, 100, 512), progress=False)
    assert abs(ppl_cmd - ppl_mem) < 1e-4, (ppl_cmd, ppl_mem)
    assert 4.18 < ppl_mem < 4.9
    stdout, stderr = run_lowbit("generate", out, "--prompt", "Once upon a time", "--max-new-tokens", 24)
    want = tok.decode(model.generate(tok.encode("Once upon a time", add_bos=True), 24, eos_id=tok.eos_id))
    assert stdout.strip() == want.strip() and want.startswith("Once upon a time")
    assert re.search(r"\d+ tokens in [0-9.]+ s: [0-9.]+ tokens/s", stderr)
    stdout, _ = run_lowbit("inspect", out)
    assert stdout.count("model.layers.") == 35
    # the 8-bit compute mode from the command line: the Python path's perplexity in that mode
    stdout, stderr = run_lowbit("eval", out, "--text", text, "--samples", 20, "--quiet", "--compute", "int8")
    r = lowbit.set_compute(model, "int8")
    assert len(r["int8"]) == (35 if name == "INT4_GPTQ_WEIGHT_QUANT_CFG" else 0)  # weight-only INT layers only
    ppl8 = cli.perplexity(model, cli.token_batches(tok, texts[:20], 20, 512), progress=False)
    assert abs(float(re.search(r"perplexity ([0-9.]+)", stdout).group(1)) - ppl8) < 1e-4
    assert f"compute int8: {len(r['int8'])} layers, {len(r['exact'])} exact" in stderr


def test_load_pretrained_needs_only_the_quantized_folder(stories_folder, tmp_path):
    folder, calib, _ = stories_folder
    model, tok = _in_memory(folder, calib, "INT4_GPTQ_WEIGHT_QUANT_CFG")
    src = tmp_path / "src"
    shutil.copytree(folder, src)
    save_pretrained(model, tmp_path / "q", src, max_shard_bytes=60_000)
    shutil.rmtree(src)  # nothing of the float folder is left to read
    files = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) >= 3
    q = load_pretrained(tmp_path / "q")
    layer = q.model.layers[2].mlp.down_proj
    assert isinstance(layer, DeployLinear) and "weight" not in dict(layer.named_parameters())
    assert not any(p.is_meta for p in q.parameters()) and not any(b.is_meta for b in q.buffers())
    x = torch.tensor([tok.encode("Once upon a time, there was", add_bos=True)])
    assert torch.equal(q(x), model(x))
    assert lowbit.model_bytes(q) < 0.45 * lowbit.model_bytes(load_hf_model(folder))


def test_damaged_quantized_folders_are_refused(stories_folder, tmp_path):
    folder, calib, _ = stories_folder
    model, _ = _in_memory(folder, calib, "INT8_SMOOTHQUANT_CFG")
    save_pretrained(model, tmp_path / "q", folder, max_shard_bytes=60_000)
    shards = sorted((tmp_path / "q").glob("model-*.safetensors"))
    data = bytearray(shards[1].read_bytes())
    data[-5] ^= 0x01
    shards[1].write_bytes(bytes(data))
    with pytest.raises(lowbit.FormatError, match=r"checksum mismatch"):
        load_pretrained(tmp_path / "q")
    shards[1].unlink()
    with pytest.raises(ValueError, match=r"model-00002-of-\d{5}\.safetensors"):
        load_pretrained(tmp_path / "q")
    with pytest.raises(ValueError, match=r"not a lowbit-quantized folder"):
        load_pretrained(folder)


def _synthetic_folder(path, arch, dtype, **extra):
    cfg = {"architectures": [arch], "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 80, "rms_norm_eps": 1e-6,
           "rope_theta": 5000.0, "tie_word_embeddings": False, "torch_dtype": str(dtype).split(".")[1],
           "max_position_embeddings": 64, **extra}
    model = LlamaForCausalLM(HFLlamaConfig.from_dict(cfg))
    torch.manual_seed(0)
    sd = {k: (torch.randn_like(v) * 0.2).to(dtype) for k, v in model.state_dict().items()}
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    torch.ops.lowbit.save_safetensors(str(path / "model.safetensors"), list(sd), list(sd.values()), [], [])
    return sd


def test_qwen2_biases_gqa_and_untied_bf16_weights(tmp_path):
    sd = _synthetic_folder(tmp_path / "qwen", "Qwen2ForCausalLM", torch.bfloat16)
    assert "model.layers.0.self_attn.q_proj.bias" in sd and "model.layers.0.self_attn.o_proj.bias" not in sd
    m = load_hf_model(tmp_path / "qwen")
    assert m.lm_head.weight.dtype == torch.bfloat16 and m.lm_head.weight is not m.model.embed_tokens.weight
    assert torch.equal(m.model.layers[1].self_attn.k_proj.bias, sd["model.layers.1.self_attn.k_proj.bias"])
    x = torch.tensor([[1, 5, 7, 9, 11]])
    y = m(x)
    # the biases take part: zeroing one changes the output
    m.model.layers[0].self_attn.q_proj.bias.data.zero_()
    assert not torch.equal(m(x), y)
    # a KV-cached continuation equals the full forward pass
    m = load_hf_model(tmp_path / "qwen", dtype=torch.float32)
    full = m(x)
    caches = m.new_caches()
    m(x[:, :3], caches)
    step = m(x[:, 3:4], caches)
    assert torch.allclose(step[0, -1], full[0, 3], atol=1e-5)
    lowbit.quantize(m, lowbit.INT4_GPTQ_WEIGHT_QUANT_CFG)
    lowbit.calibrate(m, [torch.randint(0, 80, (1, 32))])
    lowbit.convert(m)
    save_pretrained(m, tmp_path / "q", tmp_path / "qwen")
    q = load_pretrained(tmp_path / "q")
    assert torch.equal(q(x), m(x))


def test_mistral_sliding_window_masks_far_positions(tmp_path):
    _synthetic_folder(tmp_path / "m", "MistralForCausalLM", torch.float32, sliding_window=4)
    m = load_hf_model(tmp_path / "m")
    x = torch.randint(0, 80, (1, 12))
    y = m(x)
    x2 = x.clone()
    x2[0, 0] = (x[0, 0] + 1) % 80  # outside the window of position 11 (at every layer: 2 * 4 < 11)
    assert torch.equal(m(x2)[0, 11], y[0, 11]) and not torch.equal(m(x2)[0, 1], y[0, 1])


def test_unsupported_architectures_and_bad_configs_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"architectures \['GPT2LMHeadModel'\] is not supported; supported: "
                                         r"LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"):
        HFLlamaConfig.from_dict({"architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(ValueError, match=r"rope_scaling type 'yarn' is not supported"):
        HFLlamaConfig.from_dict({"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 8,
                                 "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 8,
                                 "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
        load_hf_model(tmp_path)


def test_weights_in_the_checkpoint_dtype_are_not_copied(tmp_path):
    # a 2 x 16 MB bf16 checkpoint: loading it as bf16 maps the file (RSS barely moves),
    # loading it as float32 converts (RSS grows by the converted size)
    _synthetic_folder(tmp_path / "big", "LlamaForCausalLM", torch.bfloat16, vocab_size=65536, hidden_size=128,
                      num_attention_heads=4, num_key_value_heads=4)
    code = ("import resource, torch, lowbit\n"
            "def rss():\n    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
            f"a = rss(); m = lowbit.load_hf_model({str(tmp_path / 'big')!r}, dtype=torch.{{}}); print(rss() - a)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    grow = {}
    for dt in ("bfloat16", "float32"):
        r = subprocess.run([sys.executable, "-c", code.format(dt)], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        grow[dt] = int(r.stdout.split()[-1])
    assert grow["bfloat16"] < 8 << 20 and grow["float32"] > 60 << 20, grow


def test_pip_install_gives_the_lowbit_command(stories_folder, tmp_path):
    # a venv over the system packages (Debian's torch), the package built by pip through
    # CMake (reusing the suite's build folder), then the command from another folder with
    # no PYTHONPATH: the installed package alone must serve it
    folder, calib, text = stories_folder
    venv = tmp_path / "venv"
    r = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"python3 -m venv is unavailable: {r.stderr.strip()[:200]}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPENBLAS_CORETYPE")}
    env["LOWBIT_CMAKE_BUILD_DIR"] = str(ROOT / "build")
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-build-isolation", "--no-deps", "--no-index",
                        str(ROOT)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    env.pop("LOWBIT_CMAKE_BUILD_DIR")
    lowbit_cmd = str(venv / "bin" / "lowbit")
    r = subprocess.run([lowbit_cmd, "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and "quantize" in r.stdout and "generate" in r.stdout
    probe = ("import lowbit, os, sys; print(lowbit.__file__); print(os.environ.get('OPENBLAS_CORETYPE'))")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0 and str(venv) in r.stdout.splitlines()[0], r.stdout + r.stderr
    assert r.stdout.splitlines()[1] == "None"  # import lowbit in a user's program sets nothing
    r = subprocess.run([lowbit_cmd, "quantize", str(folder), "--config", "INT8_MINMAX_WEIGHT_QUANT_CFG", "--calib",
                        str(calib), "--samples", "4", "--seqlen", "64", "--out", "q"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / "q" / "config.json").exists() and "35 quantized layers" in r.stdout

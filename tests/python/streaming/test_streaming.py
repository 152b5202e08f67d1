"""Streaming calibration (lowbit.streaming, `lowbit quantize --sequential`): equal to the
in-memory sequential path, resumable after a kill, and bounded in memory by one layer."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowbit
from conftest import ROOT, run_lowbit
from lowbit import cli
from lowbit.checkpoints import load_hf_model
from lowbit.models.hf_llama import HFLlamaConfig, LlamaForCausalLM
from lowbit.pretrained import load_pretrained
from lowbit.streaming import WORK_DIR, quantize_streaming
from lowbit.tokenizers import load_hf_tokenizer

SAMPLES, SEQLEN = 12, 96


def _batches(folder, calib):
    tok = load_hf_tokenizer(folder)
    return [b[:, :-1] for b in cli.token_batches(tok, cli.read_samples(calib), SAMPLES, SEQLEN)]


def _assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, differ[:5]


@pytest.mark.parametrize("name", ["INT4_GPTQ_WEIGHT_QUANT_CFG", "INT8_SMOOTHQUANT_CFG", "HIFP8_OFMR_CFG"])
def test_streaming_equals_the_in_memory_sequential_path(stories_folder, name, tmp_path):
    folder, calib, _ = stories_folder
    batches = _batches(folder, calib)
    cfg = lowbit.builtin_config(name)
    cfg["batch_num"] = len(batches)
    model = load_hf_model(folder)
    lowbit.quantize(model, cfg, sequential=True)
    lowbit.calibrate(model, batches)
    lowbit.convert(model)
    result = quantize_streaming(folder, lowbit.builtin_config(name), batches, tmp_path / "q", progress=False,
                                log=lambda s: None)
    streamed = load_pretrained(tmp_path / "q")
    _assert_same_model(streamed, model)  # bit for bit: packed codes, scales, smoothing factors
    assert not (tmp_path / "q" / WORK_DIR).exists()
    assert [t["layer"] for t in result["timings"]] == [0, 1, 2, 3, 4, "head"]
    assert all(t["seconds"] > 0 for t in result["timings"])
    index = json.loads((tmp_path / "q" / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["model.layers.3.mlp.up_proj.weight_packed"] == "model-00004-of-00006.safetensors"


def test_a_killed_run_resumes_to_the_uninterrupted_result(stories_folder, tmp_path):
    folder, calib, _ = stories_folder
    args = ["quantize", folder, "--config", "INT4_GPTQ_WEIGHT_QUANT_CFG", "--calib", calib, "--samples", SAMPLES,
            "--seqlen", SEQLEN + 1, "--sequential"]
    run_lowbit(*args, "--out", tmp_path / "whole")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    p = subprocess.Popen([sys.executable, "-m", "lowbit", *map(str, args), "--out", str(tmp_path / "cut")],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    seen = []
    for line in p.stderr:
        seen.append(line)
        if "layer 2 written" in line:
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=120)
    assert p.returncode == -signal.SIGKILL, "".join(seen)
    cut = tmp_path / "cut"
    assert not (cut / "config.json").exists()  # never looks complete
    assert json.loads((cut / WORK_DIR / "state.json").read_text())["next_layer"] == 3
    with pytest.raises(ValueError, match=r"not a lowbit-quantized folder"):
        load_pretrained(cut)
    r = subprocess.run([sys.executable, "-m", "lowbit", *map(str, args), "--out", str(cut)], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 2 and "unfinished streaming run; pass resume=True (--resume)" in r.stderr
    _, stderr = run_lowbit(*args, "--out", cut, "--resume")
    assert "resuming" in stderr and "at layer 3 of 5" in stderr and "layer 2 written" not in stderr
    _assert_same_model(load_pretrained(cut), load_pretrained(tmp_path / "whole"))
    # another calibration set cannot continue this folder's run
    (cut / WORK_DIR).mkdir()
    (cut / WORK_DIR / "state.json").write_text(json.dumps({"fingerprint": "x", "next_layer": 1}))
    with pytest.raises(ValueError, match=r"resume: .* was started with another model, config"):
        quantize_streaming(folder, lowbit.INT4_GPTQ_WEIGHT_QUANT_CFG, _batches(folder, calib), cut, resume=True,
                           progress=False, log=lambda s: None)


def test_peak_memory_is_bounded_by_one_layer(tmp_path):
    # 16 layers of hidden 1024 / intermediate 2816 in fp32: 51 MB a layer, 0.8 GB in all.
    # Streaming GPTQ must stay within the interpreter's RSS + 6 layers' worth (the layer,
    # its fake-quantized copy, Hessians, GPTQ's temporaries, packed output, activations,
    # allocator slack; about 4 are measured); the float model alone is 2.7 times that bound.
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 1024, "intermediate_size": 2816,
           "num_hidden_layers": 16, "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 2048,
           "torch_dtype": "float32", "max_position_embeddings": 128, "tie_word_embeddings": False}
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    model = LlamaForCausalLM(HFLlamaConfig.from_dict(cfg), device="meta")
    names = [n for n, _ in model.named_parameters()]
    shapes = [tuple(p.shape) for _, p in model.named_parameters()]
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    total = sum(t.numel() * 4 for t in tensors)
    torch.ops.lowbit.save_safetensors(str(folder / "model.safetensors"), names, tensors, [], [])
    del tensors
    layer_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if n.startswith("model.layers.0."))
    code = (
        "import resource, sys, torch, lowbit\n"
        "from lowbit.streaming import quantize_streaming\n"
        "def rss():\n    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "base = rss()\n"
        "batches = [torch.randint(0, 2048, (1, 32), generator=torch.Generator().manual_seed(i)) for i in range(2)]\n"
        f"r = quantize_streaming({str(folder)!r}, lowbit.INT4_GPTQ_WEIGHT_QUANT_CFG, batches, {str(tmp_path / 'q')!r},"
        " progress=False, log=lambda s: None)\n"
        "print(base, r['peak_rss_bytes'], r['estimated_bytes'])\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    base, peak, estimate = map(int, r.stdout.split()[-3:])
    bound = base + 6 * layer_bytes
    assert total > 16 * layer_bytes  # the float model would not fit the bound
    assert peak < bound, (peak >> 20, bound >> 20, base >> 20, layer_bytes >> 20)
    assert peak - base < 1.5 * estimate, (peak - base, estimate)
    assert load_pretrained(tmp_path / "q").model.layers[15].mlp.down_proj.weight_packed.shape == (1024, 1408)


def test_map_large_blocks_checks_its_argument():
    from lowbit.memory import map_large_blocks
    with pytest.raises(ValueError, match=r"min_bytes=0 is outside \[4096, 2\*\*30\]"):
        map_large_blocks(0)
    with pytest.raises(ValueError, match=r"min_bytes='1' is outside"):
        map_large_blocks("1")
    assert map_large_blocks(1 << 20) is (sys.platform == "linux")

"""Streaming a model object (quantize_streaming(..., model=)): an architecture lowbit has no
class for, given as a module tree on the meta device beside its checkpoint folder, streams
to the same result as the in-memory sequential path, resumes after a kill, and reads back
with load_pretrained(..., model=)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowbit
from conftest import ROOT
from lowbit.checkpoints import read_config
from lowbit.models.hf_llama import LlamaForCausalLM
from lowbit.pretrained import load_pretrained
from lowbit.streaming import WORK_DIR, quantize_streaming
from tiny_gpt import TinyGPT, write_folder

HERE = Path(__file__).parent


def _batches(n=6, t=24, vocab=512):
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(0, vocab, (1, t + (j % 3)), generator=gen) for j in range(n)]


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb), sorted(set(sa) ^ set(sb))[:5]
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, differ[:5]


def _quiet(**kw):
    return dict(progress=False, log=lambda s: None, **kw)


@pytest.mark.parametrize("name,project_in", [("INT4_GPTQ_WEIGHT_QUANT_CFG", False), ("INT8_SMOOTHQUANT_CFG", False),
                                              ("HIFP8_OFMR_CFG", False), ("INT4_GPTQ_WEIGHT_QUANT_CFG", True)])
def test_a_user_model_streams_to_the_in_memory_sequential_result(tmp_path, name, project_in):
    # project_in: a quantized Linear before the blocks (calibrated on float passes first, as
    # the in-memory path does) and blocks called with hidden_states= by keyword
    float_model = write_folder(tmp_path / "gpt", project_in=project_in)
    batches = _batches()
    cfg = lowbit.builtin_config(name)
    cfg["batch_num"] = len(batches)
    lowbit.quantize(float_model, cfg, sequential=True)
    lowbit.calibrate(float_model, batches)
    lowbit.convert(float_model)
    if project_in:
        assert type(float_model.project_in).__name__ == "DeployLinear"
    user = TinyGPT(project_in=project_in, device="meta")
    result = quantize_streaming(tmp_path / "gpt", lowbit.builtin_config(name), batches, tmp_path / "q",
                                model=user, **_quiet())
    assert [t["layer"] for t in result["timings"]] == [0, 1, 2, 3, "head"]
    assert all(p.is_meta for p in user.parameters())  # the user's model is not changed
    streamed = load_pretrained(tmp_path / "q", model=user)
    _same_state(streamed, float_model)  # bit for bit: codes, scales, smoothing factors, the tied head
    assert type(streamed.lm_head).__name__ == type(float_model.lm_head).__name__
    x = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(streamed(x), float_model(x))
    assert not (tmp_path / "q" / WORK_DIR).exists()


def test_lowbits_own_llama_given_as_a_model_object_equals_the_builtin_path(stories_folder, tmp_path):
    # the real stories260K model through the generic path: blocks found, their (h, cos, sin,
    # mask) arguments caught at the first block, the head run by the model's own forward
    from test_streaming import _batches as story_batches
    folder, calib, _ = stories_folder
    batches = story_batches(folder, calib)[:6]
    name = "INT4_GPTQ_WEIGHT_QUANT_CFG"
    quantize_streaming(folder, lowbit.builtin_config(name), batches, tmp_path / "builtin", **_quiet())
    user = LlamaForCausalLM(read_config(folder), device="meta")
    lines = []
    quantize_streaming(folder, lowbit.builtin_config(name), batches, tmp_path / "object", model=user,
                       progress=False, log=lines.append)
    assert "LlamaForCausalLM (user model), 5 blocks in 'model.layers'" in lines[0]
    builtin = load_pretrained(tmp_path / "builtin")
    generic = load_pretrained(tmp_path / "object", model=user)
    _same_state(generic, builtin)
    x = batches[0][:, :40]
    with torch.no_grad():
        assert torch.equal(generic(x), builtin(x))


def test_a_killed_user_model_run_resumes_to_the_uninterrupted_result(tmp_path):
    write_folder(tmp_path / "gpt")
    batches = _batches()
    name = "INT4_GPTQ_WEIGHT_QUANT_CFG"
    quantize_streaming(tmp_path / "gpt", lowbit.builtin_config(name), batches, tmp_path / "whole",
                       model=TinyGPT(device="meta"), **_quiet())
    code = ("import sys, torch, lowbit\n"
            f"sys.path.insert(0, {str(HERE)!r})\n"
            "from tiny_gpt import TinyGPT\n"
            "from test_streaming_model import _batches\n"
            "from lowbit.streaming import quantize_streaming\n"
            f"quantize_streaming({str(tmp_path / 'gpt')!r}, lowbit.builtin_config({name!r}), _batches(), "
            f"{str(tmp_path / 'cut')!r}, model=TinyGPT(device='meta'), progress=False)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "python"), str(HERE), str(HERE.parent)]),
               LOWBIT_TEST_EXIT_AT="0:2")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 17, r.stderr[-2000:]
    assert "layer 1 written" in r.stderr and "layer 2 written" not in r.stderr
    assert not (tmp_path / "cut" / "config.json").exists()
    lines = []
    quantize_streaming(tmp_path / "gpt", lowbit.builtin_config(name), batches, tmp_path / "cut",
                       model=TinyGPT(device="meta"), resume=True, progress=False, log=lines.append)
    assert any("resuming" in s and "at layer 2 of 4" in s for s in lines)
    _same_state(load_pretrained(tmp_path / "cut", model=TinyGPT(device="meta")),
                load_pretrained(tmp_path / "whole", model=TinyGPT(device="meta")))


def test_model_object_errors_name_the_problem(tmp_path):
    write_folder(tmp_path / "gpt")
    cfg, batches = lowbit.builtin_config("INT4_GPTQ_WEIGHT_QUANT_CFG"), _batches(2)
    user = TinyGPT(device="meta")
    with pytest.raises(ValueError, match=r"layers: 'transformer\.nope' is not a submodule of the model"):
        quantize_streaming(tmp_path / "gpt", cfg, batches, tmp_path / "q", model=user, layers="transformer.nope")
    with pytest.raises(ValueError, match=r"layers: 'transformer\.ln_f' is LayerNorm, expected a non-empty "
                                         r"nn\.ModuleList"):
        quantize_streaming(tmp_path / "gpt", cfg, batches, tmp_path / "q", model=user, layers="transformer.ln_f")
    with pytest.raises(ValueError, match=r"layers: only used with model="):
        quantize_streaming(tmp_path / "gpt", cfg, batches, tmp_path / "q", layers="transformer.h")
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module, got dict"):
        quantize_streaming(tmp_path / "gpt", cfg, batches, tmp_path / "q", model={})
    with pytest.raises(ValueError, match=r"no nn\.ModuleList or nn\.Sequential of blocks"):
        quantize_streaming(tmp_path / "gpt", cfg, batches, tmp_path / "q", model=torch.nn.Linear(2, 2))
    real = TinyGPT()
    lowbit.quantize(real, dict(cfg, batch_num=1))
    with pytest.raises(ValueError, match=r"model: already quantized"):
        quantize_streaming(tmp_path / "gpt", cfg, batches, tmp_path / "q", model=real)
    wider = TinyGPT(d=96, device="meta")
    with pytest.raises(ValueError, match=r"tensor 'transformer\.wte\.weight' has shape \(512, 64\), the model "
                                         r"expects \(512, 96\)"):
        quantize_streaming(tmp_path / "gpt", cfg, batches, tmp_path / "q2", model=wider, **_quiet())
    deeper = TinyGPT(layers=5, device="meta")
    with pytest.raises(ValueError, match=r"tensor 'transformer\.h\.4\.ln_1\.weight' is on the meta device and not "
                                         r"in the folder"):
        quantize_streaming(tmp_path / "gpt", cfg, batches, tmp_path / "q3", model=deeper, **_quiet())
    assert not (tmp_path / "q3" / "config.json").exists()  # an unfinished folder never looks complete

"""Inputs that used to crash the process or give unclear errors (the reliability issue):
the config converter (self-containing and deeply nested values, huge ints, lone
surrogates, NUL characters), sizes that drive allocations (group_size), the integer
kernels' activation zero point, and damaged safetensors headers. Cases that crashed run
in a subprocess, so a regression fails its test instead of killing the test run."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit

ROOT = Path(__file__).resolve().parents[3]


def run_isolated(code):
    """Runs code in a fresh interpreter; returns (exit code, stdout + stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    r = subprocess.run([sys.executable, "-c", "import lowbit, torch\n" + code], capture_output=True, text=True,
                       env=env, timeout=120)
    return r.returncode, r.stdout + r.stderr


def cfg(**weights):
    return {"quant_cfg": {"weights": {"type": "int8", **weights}}}


def test_self_containing_config_is_an_error_not_a_crash():
    rc, out = run_isolated(
        "c = {'quant_cfg': {'weights': {'type': 'int8'}}}\n"
        "c['quant_cfg']['weights']['me'] = c\n"
        "try:\n    lowbit.validate_config(c)\nexcept ValueError as e:\n    print('ERR', e)\n")
    assert rc == 0, out  # was: SIGSEGV (-11), unbounded recursion in to_value
    assert "ERR quant_cfg.weights.me: the dict contains itself" in out


def test_deep_nesting_is_bounded():
    rc, out = run_isolated(
        "v = []\nfor _ in range(20000):\n    v = [v]\n"
        "try:\n    lowbit.validate_config({'quant_cfg': {'weights': {'type': 'int8'}}, 'skip_layers': v})\n"
        "except ValueError as e:\n    print('ERR', e)\n")
    assert rc == 0, out
    assert "ERR skip_layers" in out and "nested more than 32 levels deep" in out


@pytest.mark.parametrize("value", [2 ** 63, -(2 ** 63) - 1, 10 ** 40])
def test_ints_beyond_int64_name_the_key(value):
    with pytest.raises(ValueError, match=r"^batch_num: the int -?\d+ is out of range"):
        lowbit.validate_config({"batch_num": value, **cfg()})
    with pytest.raises(ValueError, match=r"^quant_cfg\.weights\.group_size: the int"):
        lowbit.validate_config(cfg(strategy="group", group_size=value))


def test_lone_surrogates_name_the_key():
    with pytest.raises(ValueError, match=r"^quant_cfg\.weights\.type: the str cannot be encoded as UTF-8"):
        lowbit.validate_config(cfg(type="int\udc008"))
    with pytest.raises(ValueError, match=r"cannot be encoded as UTF-8"):
        lowbit.validate_config({"quant_cfg": {"weights": {"type": "int8"}, "x\ud800.weights": {"type": "int8"}}})


def test_nul_characters_do_not_cut_messages():
    with pytest.raises(ValueError) as e:
        lowbit.validate_config({"quant_cfg": {"weights": {"type": "int8", "sym\x00metric": True}}})
    msg = str(e.value)
    assert "sym\\x00metric: unknown key" in msg and "allowed keys: type, symmetric, strategy, group_size" in msg
    with pytest.raises(ValueError, match=r"'int\\x008' is not allowed.*allowed: int8, int4"):
        lowbit.validate_config(cfg(type="int\x008"))


def test_huge_group_size_is_refused_before_any_allocation():
    with pytest.raises(ValueError, match=r"quant_cfg\.weights\.group_size: 1099511627776 is larger than 1048576"):
        lowbit.validate_config(cfg(strategy="group", group_size=2 ** 40))
    # the kernels check it too (was: convert segfaulted on a scratch row sized by group_size)
    rc, out = run_isolated(
        "x = torch.randn(4, 64)\n"
        "for gs in (2**40, 2**21):\n"
        "    try:\n        lowbit.fake_quant(x, 'int4', 'group', gs, True)\n"
        "    except ValueError as e:\n        print('ERR', e)\n")
    assert rc == 0, out
    assert out.count("ERR group_size") == 2 and "up to 1048576" in out
    lowbit.validate_config(cfg(strategy="group", group_size=2 ** 20))  # the limit itself is allowed


@pytest.mark.parametrize("offset,scale", [(2 ** 31 - 1, 0.01), (128, 0.01), (-129, 0.01), (0, 0.0),
                                          (0, float("nan")), (0, float("inf")), (0, -0.5)])
def test_int8_kernels_refuse_impossible_activation_parameters(offset, scale):
    # 128 + act_offset overflowed int32 in linear_int8 (signed overflow: undefined behaviour)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32))
    lowbit.quantize(m, {"quant_cfg": {"weights": {"type": "int8"}, "inputs": {"type": "int8", "symmetric": False}}})
    m(torch.randn(8, 64))
    lowbit.convert(m)
    assert m[0].integer_kernel
    m[0].act_offset.fill_(offset)
    m[0].act_scale.fill_(scale)
    what = "act_scale" if not (scale > 0 and math.isfinite(scale)) else "act_offset"
    with pytest.raises(ValueError, match=rf"{what}: .* (is outside the int8 range|is not a finite positive scale)"):
        m(torch.randn(2, 64))


def _saved(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16))
    lowbit.convert(lowbit.quantize(model, cfg()))
    lowbit.save(model, tmp_path)
    return tmp_path / "model.safetensors"


def fresh():
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16))


def test_header_length_lowered_by_one_is_refused(tmp_path):
    # the header ends in alignment spaces, so the JSON still parses: before, the shifted
    # data section loaded without error and the model output NaN
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    assert data[8 + n - 1] == ord(" ")
    data[:8] = (n - 1).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(lowbit.FormatError, match=r"model\.safetensors: safetensors: tensor '.*': 1 unused bytes "
                                                  r"before its data|1 bytes after the last tensor"):
        lowbit.load(fresh(), tmp_path)


def test_any_changed_data_byte_is_caught_by_the_checksum(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(lowbit.FormatError, match=r"checksum mismatch: the metadata says crc32c:[0-9a-f]{8}, the "
                                                  r"content gives crc32c:[0-9a-f]{8}"):
        lowbit.load(fresh(), tmp_path)


def test_element_count_overflow_in_a_header_is_refused(tmp_path):
    header = b'{"x":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}}'
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(lowbit.FormatError, match=r"tensor 'x': (element count of the shape overflows|0 bytes do not "
                                                  r"match)"):
        lowbit.load(fresh(), tmp_path)


def test_invalid_utf8_header_is_a_format_error(tmp_path):
    header = b'{"\xff\xfe":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}'
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(lowbit.FormatError, match=r"invalid UTF-8 at byte 2"):  # was: UnicodeDecodeError
        lowbit.load(fresh(), tmp_path)

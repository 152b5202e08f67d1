"""lowbit.save under SIGKILL at random moments, on a full disk (tmpfs, RLIMIT_FSIZE), and
lowbit.json as a readable copy that lowbit.load never reads.

The models are stories260K quantized two ways (weight-only, cheap); a synthetic MLP stands
in when the shared data folder is missing. Saves are killed in a worker process forked
from a "zygote" subprocess (the same python, PYTHONPATH=python) that imported torch and
lowbit once: a fresh worker per kill without paying the 2-3 s import every time.

Run by hand to compare with a non-atomic writer (open(..., "wb") + chunked writes of the
very bytes lowbit.save writes), which the kill check must catch:

    PYTHONPATH=python python3 tests/python/serialization/test_save_crash.py [--kills 24] [--seed 0]
"""
import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

import lowbit  # noqa: E402
from lowbit.data import data_dir  # noqa: E402

TENSORS, META = "model.safetensors", "lowbit.json"
KILLS = int(os.environ.get("LOWBIT_SAVE_KILLS", "24"))
MAX_DELAY = 0.4  # seconds of save loop before each kill


def have_shared_data():
    return (data_dir() / "models" / "stories260K.bin").exists()


# ---- the two models A and B (built identically in the parent and in the zygote) ----

def make_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 384), nn.ReLU(), nn.Linear(384, 256), nn.ReLU(), nn.Linear(256, 64))


def float_model(kind):
    if kind == "lm":
        from lowbit.eval import lm
        return lm.load_stories260k()[0]
    return make_mlp()


def configs(kind):
    skip = {"skip_layers": {"output"}} if kind == "lm" else {}
    a = lowbit.INT8_MINMAX_WEIGHT_QUANT_CFG
    a.update(skip)
    b = {"quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 32}}, **skip}
    return a, b


def fixed_input(kind):
    if kind == "lm":
        from lowbit.eval import lm
        _, tok = lm.load_stories260k()
        return lm.token_batches(tok, lm.EVAL_RANGE, limit=1)[0][:, :48]
    return torch.randn(4, 256, generator=torch.Generator().manual_seed(1))


class Pair:
    """Models A and B converted, their outputs on a fixed input, and each one saved once
    into a reference folder (with its checksum and readable copy)."""

    def __init__(self, root):
        self.kind = "lm" if have_shared_data() else "mlp"
        self.template = float_model(self.kind)
        self.x = fixed_input(self.kind)
        self.models, self.out, self.ref, self.checksum, self.readable, self.size, self.bytes = ({} for _ in range(7))
        for name, cfg in zip("AB", configs(self.kind)):
            m = lowbit.convert(lowbit.quantize(copy.deepcopy(self.template), cfg))
            with torch.no_grad():
                self.out[name] = m(self.x)
            self.models[name] = m
            self.ref[name] = root / f"ref{name}"
            lowbit.save(m, self.ref[name])
            self.checksum[name] = tensor_checksum(self.ref[name])
            self.readable[name] = json.loads((self.ref[name] / META).read_text())
            self.bytes[name] = (self.ref[name] / TENSORS).read_bytes()
            self.size[name] = len(self.bytes[name])
        assert not torch.equal(self.out["A"], self.out["B"])  # the outputs tell A from B
        assert self.checksum["A"] != self.checksum["B"]

    def load_output(self, folder):
        with torch.no_grad():
            return lowbit.load(copy.deepcopy(self.template), folder)(self.x)

    def which(self, out):
        return [n for n in "AB" if torch.equal(out, self.out[n])]


def tensor_checksum(folder):
    _, _, keys, values = torch.ops.lowbit.load_safetensors(str(Path(folder) / TENSORS))
    return dict(zip(keys, values))["lowbit.checksum"]


def temp_files(folder):
    return sorted(p.name for p in Path(folder).glob("*.tmp-*"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return Pair(tmp_path_factory.mktemp("pair"))


# ---- kills ----

ZYGOTE = r"""
import os, sys
import torch
torch.set_num_threads(1)  # the workers are forked: no OpenMP pool to inherit
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import test_save_crash as t
import lowbit
kind, refs = sys.argv[2], sys.argv[3:5]
models = [lowbit.load(t.float_model(kind), r) for r in refs]
raw = [[(n, open(os.path.join(r, n), "rb").read()) for n in (t.TENSORS, t.META)] for r in refs]

def atomic(target):
    while True:
        for m in models:
            lowbit.save(m, target)

def old_style(target):  # what a plain writer does: the old file is gone from the first byte on
    os.makedirs(target, exist_ok=True)
    while True:
        for files in raw:
            for name, data in files:
                with open(os.path.join(target, name), "wb") as f:
                    for i in range(0, len(data), 16384):
                        f.write(data[i:i + 16384])
                        f.flush()

print("ready", flush=True)
worker = None


def command(cmd):
    global worker
    if cmd[0] == "fork":
        pid = os.fork()
        if pid == 0:
            try:
                (atomic if cmd[1] == "atomic" else old_style)(cmd[2])
            except BaseException as e:
                os.write(2, f"worker {os.getpid()}: {type(e).__name__}: {e}\n".encode())
            finally:
                os._exit(3)
        worker = pid
        print(f"pid {pid}", flush=True)
    elif cmd[0] == "reap":
        _, status = os.waitpid(worker, 0)
        worker = None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        print(f"status {sig} {code}", flush=True)


try:
    for line in sys.stdin:
        command(line.split())
finally:  # the parent went away: no worker may go on saving
    if worker is not None:
        os.kill(worker, 9)
        os.waitpid(worker, 0)
"""


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "python") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("LOWBIT_DATA", str(data_dir()))
    return env


class Zygote:
    def __init__(self, pair):
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, __file__, pair.kind, str(pair.ref["A"]),
                                      str(pair.ref["B"])], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=child_env(), cwd=str(ROOT))
        self._expect("ready")

    def _expect(self, word):
        line = self.proc.stdout.readline()
        if not line.startswith(word):
            self.proc.kill()
            raise AssertionError(f"zygote said {line!r}, expected {word!r}; stderr:\n{self.proc.stderr.read()}")
        return line.split()[1:]

    def _send(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def fork(self, mode, target):
        self._send(f"fork {mode} {target}")
        return int(self._expect("pid")[0])

    def reap(self):
        self._send("reap")
        sig, code = map(int, self._expect("status"))
        return sig, code

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def inspect_folder(pair, folder):
    """What a user finds after the kill: which model loads (A, B or the error), whether
    lowbit.json is valid JSON and which model it describes, and the stale temp files
    (removed first, so that the load cannot depend on them)."""
    folder = Path(folder)
    stale = temp_files(folder)
    for name in stale:
        (folder / name).unlink()
    r = {"stale": len(stale), "loaded": None, "error": None, "json": None, "json_error": None, "file": None}
    if (folder / TENSORS).exists():  # saves are deterministic: the file is one of the two, byte for byte
        data = (folder / TENSORS).read_bytes()
        r["file"] = next((n for n in "AB" if data == pair.bytes[n]), "neither")
    try:
        out = pair.load_output(folder)
    except Exception as e:  # noqa: BLE001  (reported by the callers)
        r["error"] = f"{type(e).__name__}: {e}"
    else:
        match = pair.which(out)
        r["loaded"] = match[0] if match else "neither"
        if match:  # the checksum in the tensors file names the same model as the output
            r["tensors_checksum"] = tensor_checksum(folder)
    try:
        copy_ = json.loads((folder / META).read_text())
    except (OSError, ValueError) as e:
        r["json_error"] = f"{type(e).__name__}: {e}"
    else:
        r["json"] = next((n for n in "AB" if copy_ == pair.readable[n]), "neither")
        r["json_checksum"] = copy_.get("checksum")
    return r


def kill_run(pair, zygote, target, mode, kills, seed):
    rng = random.Random(seed)
    results = []
    for i in range(kills):
        pid = zygote.fork(mode, target)
        try:
            if i == 0:  # a first complete save: lowbit.json is written last
                deadline = time.monotonic() + 60
                while not (target / META).exists():
                    assert time.monotonic() < deadline, "no first save within 60 s"
                    time.sleep(0.005)
            time.sleep(rng.uniform(0, MAX_DELAY))
        finally:
            os.kill(pid, signal.SIGKILL)
        sig, code = zygote.reap()
        assert (sig, code) == (signal.SIGKILL, -1), f"kill {i}: the worker ended by itself (signal {sig}, exit {code})"
        results.append(inspect_folder(pair, target))
    return results


def summarize(results):
    unloadable = sum(r["loaded"] not in ("A", "B") for r in results)
    behind = sum(r["json"] in ("A", "B") and r["json"] != r["loaded"] for r in results)
    bad_json = sum(r["json"] not in ("A", "B") for r in results)
    return (f"{unloadable} of {len(results)} kills left no loadable model (A or B), {bad_json} an invalid "
            f"lowbit.json; "
            f"loaded A {sum(r['loaded'] == 'A' for r in results)}, B {sum(r['loaded'] == 'B' for r in results)}; "
            f"lowbit.json one save behind {behind}; "
            f"stale temp files {sum(r['stale'] for r in results)}")


def test_kill_during_save_leaves_a_loadable_model(pair, tmp_path):
    target = tmp_path / "model"
    zygote = Zygote(pair)
    try:
        results = kill_run(pair, zygote, target, "atomic", KILLS, seed=int(os.environ.get("LOWBIT_TEST_SEED", "1234")))
    finally:
        zygote.close()
    print(f"\natomic save, {pair.kind}: " + summarize(results))
    for i, r in enumerate(results):
        assert r["error"] is None, f"kill {i}: load failed: {r['error']}"
        assert r["loaded"] in ("A", "B"), f"kill {i}: the loaded model's output is neither A's nor B's"
        assert r["tensors_checksum"] == pair.checksum[r["loaded"]], (i, r)
        assert r["file"] == r["loaded"], (i, r)
        assert r["json_error"] is None, f"kill {i}: lowbit.json: {r['json_error']}"
        assert r["json"] in ("A", "B"), f"kill {i}: lowbit.json describes neither A nor B"
        # the readable copy is written second: it is the tensors file's or one save behind
        assert r["json_checksum"] == pair.checksum[r["json"]]
        assert r["json_checksum"] in (r["tensors_checksum"], pair.checksum["B" if r["loaded"] == "A" else "A"])
    # the random kills landed on both sides of the alternation
    assert {r["loaded"] for r in results} == {"A", "B"}, summarize(results)


# ---- full disk ----

def _pages(n):
    return (n + 4095) // 4096


def assert_still(pair, folder, name):
    """The folder holds model `name`, complete, its readable copy, and no temp file."""
    assert temp_files(folder) == []
    assert pair.which(pair.load_output(folder)) == [name]
    assert tensor_checksum(folder) == pair.checksum[name]
    readable = json.loads((Path(folder) / META).read_text())
    assert readable == pair.readable[name] and readable["checksum"] == pair.checksum[name]


def test_full_tmpfs_keeps_the_previous_model(pair, tmp_path):
    small, large = sorted("AB", key=lambda n: pair.size[n])
    meta = max(len((pair.ref[n] / META).read_bytes()) for n in "AB")
    # room for the small model's two files and half of the large model's tensors file
    size = 4096 * (_pages(pair.size[small]) + _pages(meta) + _pages(pair.size[large]) // 2)
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a {size}-byte tmpfs (needs root with CAP_SYS_ADMIN): "
                    f"{(r.stderr or r.stdout).strip()}")
    try:
        folder = mnt / "model"
        lowbit.save(pair.models[small], folder)
        assert_still(pair, folder, small)
        with pytest.raises(ValueError) as err:
            lowbit.save(pair.models[large], folder)
        msg = str(err.value)
        assert str(folder / TENSORS) in msg and "No space left on device" in msg, msg
        assert_still(pair, folder, small)
        assert os.statvfs(mnt).f_bfree * os.statvfs(mnt).f_frsize >= size - 4096 * (
            _pages(pair.size[small]) + _pages(meta))  # the failed temp file's space came back
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


FSIZE_CHILD = r"""
import json, os, resource, signal, sys
import lowbit
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import test_save_crash as t
kind, small_ref, large_ref, folder, limit = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
small = lowbit.load(t.float_model(kind), small_ref)
large = lowbit.load(t.float_model(kind), large_ref)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
lowbit.save(small, folder)
try:
    lowbit.save(large, folder)
except Exception as e:
    print(json.dumps({"type": type(e).__name__, "msg": str(e)}))
else:
    print(json.dumps({"type": None}))
"""


def test_file_size_limit_keeps_the_previous_model(pair, tmp_path):
    small, large = sorted("AB", key=lambda n: pair.size[n])
    assert pair.size[small] < pair.size[large]
    limit = (pair.size[small] + pair.size[large]) // 2
    folder = tmp_path / "model"
    r = subprocess.run([sys.executable, "-c", FSIZE_CHILD, __file__, pair.kind, str(pair.ref[small]),
                        str(pair.ref[large]), str(folder), str(limit)], capture_output=True, text=True,
                       env=child_env(), cwd=str(ROOT), timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["type"] == "ValueError", got
    assert str(folder / TENSORS) in got["msg"] and "File too large" in got["msg"], got["msg"]
    assert_still(pair, folder, small)


# ---- lowbit.json ----

def test_lowbit_json_is_a_copy_that_load_never_reads(pair, tmp_path):
    folder = tmp_path / "model"
    lowbit.save(pair.models["A"], folder)
    _, _, keys, values = torch.ops.lowbit.load_safetensors(str(folder / TENSORS))
    meta = dict(zip(keys, values))
    assert sorted(meta) == ["lowbit", "lowbit.checksum"]
    assert meta["lowbit.checksum"].startswith("crc32c:") and meta["lowbit.checksum"] == pair.checksum["A"]
    readable = json.loads((folder / META).read_text())
    assert readable == dict(json.loads(meta["lowbit"]), checksum=meta["lowbit.checksum"])
    assert (folder / META).read_text().endswith("}\n")
    assert pair.which(pair.load_output(folder)) == ["A"]

    rng = random.Random(0)
    damaged = [bytes(rng.randrange(256) for _ in range(333)),  # garbage
               (folder / META).read_bytes()[:100],  # truncated
               b"",
               (pair.ref["B"] / META).read_bytes(),  # valid JSON describing the other model
               b'{"format": "lowbit-1", "layers": {}}\n']
    for content in damaged:
        (folder / META).write_bytes(content)
        assert pair.which(pair.load_output(folder)) == ["A"], content[:40]
    (folder / META).unlink()
    assert pair.which(pair.load_output(folder)) == ["A"]
    (folder / META).mkdir()  # not even a file
    assert pair.which(pair.load_output(folder)) == ["A"]
    (folder / META).rmdir()

    # the next save rewrites a damaged copy
    (folder / META).write_bytes(b"\xff\xfe garbage")
    lowbit.save(pair.models["B"], folder)
    assert_still(pair, folder, "B")


# ---- by hand: the non-atomic writer, which the kill check must catch ----

def _main(argv):
    import argparse
    import tempfile
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=KILLS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        pair = Pair(Path(d))
        zygote = Zygote(pair)
        try:
            for mode in ("old_style", "atomic"):
                t0 = time.monotonic()
                results = kill_run(pair, zygote, Path(d) / mode, mode, args.kills, args.seed)
                print(f"{mode} writes ({pair.kind}, {time.monotonic() - t0:.1f} s): {summarize(results)}")
                for i, r in enumerate(results):
                    if r["error"] or r["json_error"]:
                        print(f"  kill {i}: load: {r['error'] or 'ok (' + str(r['loaded']) + ')'}; "
                              f"lowbit.json: {r['json_error'] or r['json']}")
        finally:
            zygote.close()


if __name__ == "__main__":
    _main(sys.argv[1:])

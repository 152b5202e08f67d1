"""What a streaming run walks through, block by block. Two sources share one interface:

- LlamaSource: a Llama-family checkpoint folder, built with lowbit's own classes from its
  config.json (lowbit.models.hf_llama);
- ModuleSource: a module tree the user provides (e.g. a transformers model built on the
  meta device) beside its checkpoint folder, for architectures lowbit has no class for.
  Its blocks are the children of one nn.ModuleList (found, or named by the user); their
  inputs are caught at the first block, with every other argument the model passes them,
  and the modules outside the blocks (embeddings, final norm, head) run in the model's own
  forward, the blocks replaced by stand-ins that hand over the streamed activations.

Interface used by run.py: n_layers, dtype, layer_path(i), identity(), raw_config(),
describe(), estimate(samples), activation_bytes(samples), flops(samples, algorithm), prepare(...) (the first
activations), new_layer(i, reader), run_layer(layer, j, h), state()/restore(state) (what
a resumed run needs), head(...)."""
import copy
import inspect
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.checkpoints import INDEX_FILE, fill_meta, read_config, weight_files
from lowbit.models.hf_llama import DecoderLayer, LlamaForCausalLM, RMSNorm
from lowbit.modules.calibration import CalibLayer
from lowbit.modules.deploy import DeployLayer
from lowbit.streaming.budget import block_peak_bytes, estimate_peak_bytes, layer_flops, uses_hessian


class Reader:
    """Tensors of a checkpoint folder by name, mapping only the shards that hold them."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.files = weight_files(folder)  # None: one model.safetensors
        self._names = None

    def names(self):
        if self._names is None:
            self._names = set(self.files) if self.files is not None else \
                set(torch.ops.lowbit.load_safetensors(str(self.folder / "model.safetensors"))[0])
        return self._names

    def get(self, names, dtype):
        """{name: tensor}, floating tensors in ``dtype``; copies (no view keeps a shard mapped)."""
        shards = {}
        for n in names:
            f = self.folder / "model.safetensors" if self.files is None else self.files.get(n)
            if f is None:
                raise ValueError(f"{self.folder}: tensor '{n}' is not in {INDEX_FILE}")
            shards.setdefault(f, []).append(n)
        out = {}
        for f, wanted in shards.items():
            got = dict(zip(*torch.ops.lowbit.load_safetensors(str(f))[:2]))
            for n in wanted:
                if n not in got:
                    raise ValueError(f"{f}: tensor '{n}' is missing")
                t = got[n]
                out[n] = t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t.clone()
        return out

    def fill(self, module, dtype, prefix=""):
        """Real tensors from the folder for the meta parameters and buffers of ``module``
        (checkpoints.fill_meta; its names are ``prefix`` + the module's own)."""
        fill_meta(module, self.names(), lambda names: self.get(names, dtype), str(self.folder), prefix)


def holder(path, module):
    """A module tree in which only ``path`` exists, so that its layers carry the full
    model's names (config globs and skip_layers match as on the whole model)."""
    root = node = nn.ModuleDict()
    parts = path.split(".")
    for p in parts[:-1]:
        node[p] = nn.ModuleDict()
        node = node[p]
    node[parts[-1]] = module
    return root


def quantize_block(root, config):
    """quantize() on one block; False when the config quantizes none of its layers."""
    import lowbit  # noqa: PLC0415
    try:
        lowbit.quantize(root, dict(config))
    except ValueError as e:
        if str(e).startswith("quantize: no layer would be quantized"):
            return False
        raise
    return True


def calib_layers(module):
    return [m for m in module.modules() if isinstance(m, CalibLayer)]


class LlamaSource:
    """A Llama / Mistral / Qwen2 folder, built from its config.json."""

    def __init__(self, model_dir, dtype):
        self.model_dir = Path(model_dir)
        self.cfg = read_config(model_dir)
        self.dtype = dtype or self.cfg.dtype
        self.n_layers = self.cfg.num_hidden_layers
        self.shell = LlamaForCausalLM(self.cfg, device="meta")
        self.rotary = {}

    def identity(self):
        return (self.model_dir / "config.json").read_bytes()

    def raw_config(self):
        return self.cfg.raw

    def describe(self):
        return f"{self.cfg.architecture}, {self.n_layers} layers, hidden {self.cfg.hidden_size}"

    def layer_path(self, i):
        return f"model.layers.{i}"

    def estimate(self, samples):
        return estimate_peak_bytes(self.cfg, samples, self.dtype)

    def activation_bytes(self, samples):
        """The largest activation of one sample (fp32): its widest projection output."""
        return max(b.shape[1] for b in samples) * max(self.cfg.hidden_size, self.cfg.intermediate_size) * 4

    def flops(self, samples, algorithm):
        return layer_flops(self.cfg, samples, algorithm)

    def state(self):
        return {}

    def restore(self, state):
        pass

    def prepare(self, reader, samples, group, plan, count, config, need_inputs):
        self.rotary = {t: self.shell._rotary(0, t) for t in {b.shape[1] for b in samples}}
        if not need_inputs:
            return None
        w = reader.get(["model.embed_tokens.weight"], self.dtype)["model.embed_tokens.weight"]
        return [F.embedding(b, w).float() for b in samples]

    def new_layer(self, i, reader):
        prefix = self.layer_path(i) + "."
        layer = DecoderLayer(self.cfg, device="meta")
        reader.fill(layer, self.dtype, prefix)
        return layer

    def run_layer(self, layer, j, h):
        return layer(h.to(self.dtype), *self.rotary[h.shape[1]], None).float()

    def head(self, reader, config):
        """(root, quantized, layers to calibrate, run(item), tail tensors()): the final norm,
        then lm_head (quantized unless the config skips it)."""
        cfg, dtype = self.cfg, self.dtype
        names = ["model.embed_tokens.weight", "model.norm.weight"] + ([] if cfg.tie_word_embeddings
                                                                      else ["lm_head.weight"])
        rest = reader.get(names, dtype)
        norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        norm.weight = nn.Parameter(rest["model.norm.weight"], requires_grad=False)
        head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device="meta")
        head.weight = nn.Parameter(rest["model.embed_tokens.weight" if cfg.tie_word_embeddings
                                        else "lm_head.weight"], requires_grad=False)
        root = holder("lm_head", head)
        quantized = quantize_block(root, config)

        def tail():
            out = {"model.embed_tokens.weight": rest["model.embed_tokens.weight"], "model.norm.weight": norm.weight}
            for k, v in root.state_dict().items():
                if not (cfg.tie_word_embeddings and k == "lm_head.weight"):
                    out[k] = v
            return out

        return (root, quantized, calib_layers(root) if quantized else [],
                lambda item: root.lm_head(norm(item[1].to(dtype))), tail)


class _Stop(Exception):
    pass


def _hidden_of(args, kwargs):
    if args:
        return args[0], args[1:], kwargs
    if "hidden_states" in kwargs:
        rest = dict(kwargs)
        return rest.pop("hidden_states"), (), rest
    raise ValueError("streaming: the first block was called without a positional tensor or `hidden_states`; "
                     "its activations cannot be streamed")


class _StandIn(nn.Module):
    """Takes the place of block ``index`` in the model while the source runs the modules
    around the blocks: block 0 catches its inputs (mode 'catch') or hands over the streamed
    activations (mode 'feed'); the others pass them on, shaped as the blocks return them."""

    def __init__(self, source, index):
        super().__init__()
        self.__dict__["source"] = source  # (not a submodule)
        self.index = index

    def forward(self, *args, **kwargs):
        src = self.source
        if src.mode == "catch":
            if self.index == 0:
                raise _Stop(args, kwargs)
            raise RuntimeError("streaming: a block after the first ran before it")  # (model code we cannot stream)
        h = src.feed if self.index == 0 else _hidden_of(args, kwargs)[0]
        return h if not src.block_output else (h,) + (None,) * (src.block_output - 1)


def find_blocks(model):
    """(path, container) of the nn.ModuleList / nn.Sequential whose children hold the most
    Linear and Conv2d layers: a transformer's decoder layers."""
    best, best_n = None, 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) >= 2:
            n = sum(1 for child in m for x in child.modules() if isinstance(x, (nn.Linear, nn.Conv2d)))
            if n > best_n:
                best, best_n = (name, m), n
    return best


class ModuleSource:
    """The user's module tree (parameters usually on the meta device) and its checkpoint
    folder, whose tensor names are the tree's state_dict names. The user's model is not
    changed: the run works on a copy."""

    def __init__(self, model, model_dir, dtype, layers=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if any(isinstance(m, (CalibLayer, DeployLayer)) for m in model.modules()):
            raise ValueError("model: already quantized; pass the float model (on the meta device)")
        if layers is None:
            found = find_blocks(model)
            if found is None:
                raise ValueError("model: no nn.ModuleList or nn.Sequential of blocks holding Linear/Conv2d layers "
                                 "was found; name the blocks with layers='path.to.list'")
            layers = found[0]
        try:
            trunk = model.get_submodule(layers)
        except AttributeError:
            raise ValueError(f"layers: '{layers}' is not a submodule of the model") from None
        if not isinstance(trunk, (nn.ModuleList, nn.Sequential)) or len(trunk) == 0:
            raise ValueError(f"layers: '{layers}' is {type(trunk).__name__}, expected a non-empty nn.ModuleList "
                             f"or nn.Sequential of blocks")
        self.model_dir = Path(model_dir)
        self.model = copy.deepcopy(model)
        self.path = layers
        self.trunk = self.model.get_submodule(layers)
        self.blocks = list(self.trunk)
        self.n_layers = len(self.blocks)
        floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
        self.dtype = dtype or (floats[0] if floats else torch.float32)
        self.mode, self.feed, self.block_output = "catch", None, 0
        self.context, self.samples, self.outer = [], [], []
        forward = inspect.signature(self.model.forward).parameters
        self.call_kwargs = {"use_cache": False} if "use_cache" in forward else {}

    def identity(self):
        cfg = self.model_dir / "config.json"
        return (cfg.read_bytes() if cfg.exists() else b"") + repr(self.model).encode()

    def raw_config(self):
        cfg = self.model_dir / "config.json"
        return json.loads(cfg.read_text(encoding="utf-8")) if cfg.exists() else {}

    def describe(self):
        return f"{type(self.model).__name__} (user model), {self.n_layers} blocks in '{self.path}'"

    def layer_path(self, i):
        return f"{self.path}.{i}"

    def _shapes(self):
        block = self.blocks[0]
        linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
        params = sum(p.numel() for p in block.parameters())
        ks = [m.in_features for m in linears]
        hidden = ks[0] if ks else 1
        return params, ks, hidden, sum(m.weight.numel() for m in linears)

    def estimate(self, samples):
        params, ks, hidden, _ = self._shapes()
        tokens = sum(b.numel() for b in samples)
        hess = (sum(k * k for k in ks) + 2 * max(ks, default=0) ** 2) * 4
        blocks = {id(p) for b in self.blocks for p in b.parameters()}
        esize = torch.empty((), dtype=self.dtype).element_size()
        outside = sum(p.numel() for p in self.model.parameters() if id(p) not in blocks) * esize
        return block_peak_bytes(params, tokens, hidden, self.dtype, hess) + outside

    def activation_bytes(self, samples):
        widest = max((max(m.in_features, m.out_features) for m in self.blocks[0].modules()
                      if isinstance(m, nn.Linear)), default=1)
        return max(b.numel() for b in samples) * widest * 4

    def flops(self, samples, algorithm):
        """Products of the blocks' Linear layers (attention scores not counted)."""
        _, ks, _, linear_params = self._shapes()
        tokens = sum(b.numel() for b in samples)
        return 2 * (2 * tokens * linear_params) + (2 * tokens * sum(k * k for k in ks) if uses_hessian(algorithm)
                                                  else 0)

    def state(self):
        return {"block_output": self.block_output}

    def restore(self, state):
        self.block_output = int(state.get("block_output", 0))

    def _forward(self, batch):
        with torch.no_grad():
            try:
                self.model(batch, **self.call_kwargs)
            except _Stop as stop:
                return stop.args
        return None

    def prepare(self, reader, samples, group, plan, count, config, need_inputs):
        """The modules outside the blocks get their tensors and are quantized (those that
        run before the first block are calibrated here, on its float inputs); then the
        first block's inputs are caught, with the other arguments of each call."""
        from lowbit.distributed import calibrate_block  # noqa: PLC0415
        for k in range(self.n_layers):
            self.trunk[k] = _StandIn(self, k)
        reader.fill(self.model, self.dtype)
        self.samples = samples
        self.mode = "catch"
        if quantize_block(self.model, config):
            self.outer = calib_layers(self.model)
            for m in self.outer:
                m.deferred = True  # float and silent until their turn
            called = set()
            hooks = [m.register_forward_pre_hook(lambda mod, a: called.add(id(mod))) for m in self.outer]
            self._forward(samples[0])
            for h in hooks:
                h.remove()
            before = [m for m in self.outer if id(m) in called]
            for m in before:
                m.deferred = False
            if before:
                calibrate_block(group, before, lambda item: self._forward(item[1]), list(enumerate(samples)),
                                plan[0], count)
        self.context, hs = [], []
        for b in samples:
            caught = self._forward(b)
            if caught is None:
                raise ValueError(f"model: its forward never called the blocks in '{self.path}'")
            h, args, kwargs = _hidden_of(*caught)
            self.context.append((args, kwargs))
            hs.append(h.float())
        return hs if need_inputs else None

    def new_layer(self, i, reader):
        block = copy.deepcopy(self.blocks[i])
        reader.fill(block, self.dtype, self.layer_path(i) + ".")
        return block

    def run_layer(self, layer, j, h):
        args, kwargs = self.context[j]
        out = layer(h.to(self.dtype), *args, **kwargs)
        if isinstance(out, (tuple, list)):
            self.block_output, out = len(out), out[0]
        else:
            self.block_output = 0
        return out.float()

    def head(self, reader, config):
        """The model's own forward with the blocks standing in: its layers after the blocks
        calibrate on the streamed activations."""
        self.mode = "feed"
        after = [m for m in self.outer if not m.calibrated]
        for m in after:
            m.deferred = False

        def run(item):
            self.feed = item[1].to(self.dtype)
            self._forward(self.samples[item[0]])
            self.feed = None

        def tail():
            out, seen = {}, set()
            for k, v in self.model.state_dict().items():
                key = (v.data_ptr(), v.dtype, tuple(v.shape), v.stride()) if v.numel() else None
                if key is None or key not in seen:  # a tied tensor once, under its first name
                    out[k] = v
                    if key is not None:
                        seen.add(key)
            return out

        return self.model, bool(self.outer), after, run, tail

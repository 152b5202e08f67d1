"""A GPT-2-shaped model that lowbit has no class for (learned positions, LayerNorm, fused
QKV with bias, GELU MLP, a causal mask passed by keyword, blocks that return tuples, an
lm_head tied to the token embeddings), written the way transformers writes models: its
forward takes ``use_cache``, and building it with device="meta" allocates nothing."""
import math

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, d, heads, ff, device=None):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d, device=device)
        self.c_attn = nn.Linear(d, 3 * d, device=device)
        self.c_proj = nn.Linear(d, d, device=device)
        self.ln_2 = nn.LayerNorm(d, device=device)
        self.c_fc = nn.Linear(d, ff, device=device)
        self.c_out = nn.Linear(ff, d, device=device)

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        x = hidden_states
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=-1)
        q, k, v = (y.view(b, t, self.heads, d // self.heads).transpose(1, 2) for y in (q, k, v))
        att = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + attention_mask
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.c_proj(y)
        x = x + self.c_out(nn.functional.gelu(self.c_fc(self.ln_2(x))))
        return (x, att if output_attentions else None)


class TinyGPT(nn.Module):
    """``project_in``: a Linear between the embeddings and the blocks (as OPT-350M has), and
    the blocks called with ``hidden_states=`` by keyword."""

    def __init__(self, vocab=512, d=64, heads=4, ff=256, layers=4, positions=128, project_in=False, device=None):
        super().__init__()
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(vocab, d, device=device), "wpe": nn.Embedding(positions, d, device=device),
            "h": nn.ModuleList(Block(d, heads, ff, device=device) for _ in range(layers)),
            "ln_f": nn.LayerNorm(d, device=device)})
        self.project_in = nn.Linear(d, d, device=device) if project_in else None
        self.lm_head = nn.Linear(d, vocab, bias=False, device=device)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, input_ids, use_cache=True):
        t = input_ids.shape[1]
        x = self.transformer.wte(input_ids) + self.transformer.wpe(torch.arange(t))
        mask = torch.full((t, t), float("-inf")).triu(1)
        if self.project_in is not None:
            x = self.project_in(x)
            for block in self.transformer.h:
                x = block(hidden_states=x, attention_mask=mask)[0]
        else:
            for block in self.transformer.h:
                x = block(x, attention_mask=mask)[0]
        return self.lm_head(self.transformer.ln_f(x))


def write_folder(folder, seed=0, **shape):
    """A checkpoint folder of a randomly initialised TinyGPT (the tied head stored once, as
    transformers does); returns the float model."""
    torch.manual_seed(seed)
    model = TinyGPT(**shape).eval()
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() == 2:
            p.data.normal_(0, 0.08)
        else:
            p.data.normal_(0, 0.02).add_(1.0 if ".ln_" in name else 0.0)
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    folder.mkdir(parents=True, exist_ok=True)
    torch.ops.lowbit.save_safetensors(str(folder / "model.safetensors"), list(sd), list(sd.values()), [], [])
    return model

"""Perplexity of the stories260K LM with the project's protocol.

Paragraphs = tinystories_val.txt split at blank lines, stripped, empty ones dropped.
Evaluation: paragraphs 0-99, each encoded with BOS first and cut to 512 tokens;
perplexity = exp(total NLL / total predicted tokens). Calibration: paragraphs 1000-1127.
"""
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lowbit.data import data_file
from lowbit.models import load_llama2c, load_tokenizer

EVAL_RANGE = (0, 100)
CALIB_RANGE = (1000, 1128)
MAX_TOKENS = 512


def paragraphs():
    text = data_file("text", "tinystories_val.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def load_stories260k():
    model = load_llama2c(data_file("models", "stories260K.bin"))
    tok = load_tokenizer(data_file("models", "tok512.bin"), model.cfg.vocab_size)
    return model, tok


def token_batches(tok, rng, limit=None):
    """One [1, T] token tensor per paragraph of the index range."""
    paras = paragraphs()[rng[0]:rng[1]]
    if limit is not None:
        paras = paras[:limit]
    return [torch.tensor([tok.encode(p)[:MAX_TOKENS]]) for p in paras]


@torch.no_grad()
def perplexity(model, batches, progress=False, desc="perplexity"):
    nll, count = 0.0, 0
    for tokens in tqdm(batches, desc=desc, disable=not progress, leave=False):
        logits = model(tokens[:, :-1]).float()
        nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="sum"))
        count += tokens.shape[1] - 1
    return math.exp(nll / count)


@torch.no_grad()
def calibrate(model, batches, progress=False):
    for tokens in tqdm(batches, desc="calibration", disable=not progress, leave=False):
        model(tokens[:, :-1])

"""Tokenizer metadata of a GGUF file (``tokenizer.ggml.*``) from lowbit's tokenizers.

- llama2.c vocabularies: model ``llama`` (SentencePiece-style: llama.cpp merges the
  adjacent pair whose merged token has the highest score, as llama2.c does), the file's
  own scores, spaces written as U+2581, <unk>/<s>/</s> as ids 0/1/2, <0xXX> as byte tokens.
- tokenizer.json, SentencePiece style (byte fallback, U+2581): model ``llama``; each
  token's score is minus the rank of the first merge that makes it, so llama.cpp's
  highest-score rule picks the merge of lowest rank.
- tokenizer.json, byte-level BPE (GPT-2, Llama-3, Qwen2): model ``gpt2`` with the merges
  in rank order and the pre-tokenizer name llama.cpp knows for the family.
"""
from lowbit.export.gguf_writer import ARRAY, BOOL, FLOAT32, INT32, STRING, UINT32

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"


def _is_byte_token(s):
    return len(s) == 6 and s.startswith("<0x") and s.endswith(">") and all(c in "0123456789ABCDEF" for c in s[3:5])


def llama2c_vocab(tok):
    """Metadata items of a lowbit.models.llama2c.Tokenizer."""
    tokens, types = [], []
    for i, p in enumerate(tok.pieces):
        if i < 3:
            tokens.append(("<unk>", "<s>", "</s>")[i])
            types.append(UNKNOWN if i == 0 else CONTROL)
            continue
        s = p.decode("utf-8")
        if not s:
            types.append(CONTROL)
        elif _is_byte_token(s):
            types.append(BYTE)
        else:
            types.append(NORMAL)
        tokens.append(s.replace(" ", _SPACE))
    return [("tokenizer.ggml.model", STRING, "llama"),
            ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
            ("tokenizer.ggml.scores", ARRAY, (FLOAT32, [float(x) for x in tok.scores])),
            ("tokenizer.ggml.token_type", ARRAY, (INT32, types)),
            ("tokenizer.ggml.unknown_token_id", UINT32, 0),
            ("tokenizer.ggml.bos_token_id", UINT32, tok.bos),
            ("tokenizer.ggml.eos_token_id", UINT32, tok.eos),
            ("tokenizer.ggml.add_bos_token", BOOL, True),
            ("tokenizer.ggml.add_eos_token", BOOL, False)]


def _hf_tokens(tok):
    tokens, types = [], []
    for i in range(tok.vocab_size):
        s = tok.id_to_token(i)
        if s is None:
            raise ValueError(f"tokenizer: id {i} has no token (ids must be contiguous for GGUF)")
        added = tok.added.get(i)
        if added is not None:
            t = CONTROL if added.special else USER_DEFINED
        elif i == tok.unk_id:
            t = UNKNOWN
        elif tok.family == "sentencepiece" and _is_byte_token(s):
            t = BYTE
        else:
            t = NORMAL
        tokens.append(s)
        types.append(t)
    return tokens, types


def _merges_by_rank(tok):
    """[(rank, left id, right id, merged id)] of a tokenizer.json BPE, lowest rank first."""
    return sorted((rank, a, b, m) for (a, b), (rank, m) in tok.model.merge_map.items())


def _pre_name(architecture, tok):
    if architecture == "Qwen2ForCausalLM":
        return "qwen2"
    return "llama-bpe" if tok.vocab_size > 100000 else "default"


def hf_vocab(tok, architecture):
    """Metadata items of a lowbit.tokenizers.HFTokenizer (tokenizer.json BPE)."""
    tokens, types = _hf_tokens(tok)
    merges = _merges_by_rank(tok)
    if tok.family == "sentencepiece":
        scores = [0.0] * len(tokens)
        made = set()
        for rank, _, _, m in merges:
            if m not in made:
                made.add(m)
                scores[m] = -float(rank + 1)
        for i, t in enumerate(types):
            if t == BYTE or (t == NORMAL and i not in made and len(tokens[i]) > 1):
                scores[i] = -1e9 if t == NORMAL else 0.0
        items = [("tokenizer.ggml.model", STRING, "llama"),
                 ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
                 ("tokenizer.ggml.scores", ARRAY, (FLOAT32, scores)),
                 ("tokenizer.ggml.token_type", ARRAY, (INT32, types))]
    elif tok.family == "byte_level":
        items = [("tokenizer.ggml.model", STRING, "gpt2"),
                 ("tokenizer.ggml.pre", STRING, _pre_name(architecture, tok)),
                 ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
                 ("tokenizer.ggml.token_type", ARRAY, (INT32, types)),
                 ("tokenizer.ggml.merges", ARRAY, (STRING, [f"{tokens[a]} {tokens[b]}" for _, a, b, _ in merges]))]
    else:
        raise ValueError(f"tokenizer: family {tok.family!r} has no GGUF tokenizer model here; supported: "
                         f"sentencepiece (llama), byte_level (gpt2)")
    for key, tid in (("bos", tok.bos_id), ("eos", tok.eos_id), ("unknown", tok.unk_id)):
        if tid is not None:
            items.append((f"tokenizer.ggml.{key}_token_id", UINT32, int(tid)))
    items.append(("tokenizer.ggml.add_bos_token", BOOL, bool(tok.prefix_ids)))
    items.append(("tokenizer.ggml.add_eos_token", BOOL, bool(tok.suffix_ids)))
    return items

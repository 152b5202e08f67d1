"""llama2.c -> Hugging Face folder conversion.

Tokenizer part: ``llama2c_tokenizer_to_hf`` turns a llama2.c vocabulary file (such as
tok512.bin: int32 max_token_length, then per token float32 score, int32 length, bytes)
into the content of tokenizer.json (SentencePiece-style family) and of
tokenizer_config.json (``llama2c_tokenizer_config``).

llama2.c encodes by repeatedly merging the adjacent pair whose concatenation is a
vocabulary token with the highest score (leftmost on ties). The converted BPE lists,
for every token of two or more characters, each split of it into two vocabulary tokens
as a merge, ranked by the token's score (highest first; equal scores by token id, then
by the length of the left part). Rank-ordered BPE then picks the same pair as
llama2.c's scorer whenever the best pairs' merged tokens differ in score; the two can
only part when two different splits of the same token overlap (``ab a ba`` for "aba"),
which the tests check does not happen on the evaluation and calibration paragraphs.
Ids 0, 1, 2 are <unk>, <s>, </s>; ids 3..258 the byte tokens <0x00>..<0xFF>; a space in a
llama2.c piece is SentencePiece's "\u2581" in tokenizer.json.
"""
import json
import struct
from pathlib import Path

LLAMA2C_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
_SPIECE_SPACE = "\u2581"


def read_llama2c_vocab(path, vocab_size):
    """(pieces as bytes, scores) of a llama2.c tokenizer file."""
    raw = Path(path).read_bytes()
    pos, pieces, scores = 4, [], []
    for i in range(vocab_size):
        if pos + 8 > len(raw):
            raise ValueError(f"{path}: truncated at token {i} of {vocab_size}")
        score, n = struct.unpack_from("<fi", raw, pos)
        pos += 8
        if n < 0 or pos + n > len(raw):
            raise ValueError(f"{path}: token {i} has a bad length {n}")
        pieces.append(raw[pos:pos + n])
        scores.append(score)
        pos += n
    return pieces, scores


def llama2c_token_strings(pieces):
    """tokenizer.json token strings of llama2.c pieces (specials renamed, spaces as \u2581)."""
    if len(pieces) < 259:
        raise ValueError(f"llama2.c vocabulary: {len(pieces)} tokens, fewer than the 3 specials and 256 byte tokens")
    out = list(LLAMA2C_SPECIAL_TOKENS)
    for i, p in enumerate(pieces[3:], start=3):
        try:
            s = p.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"llama2.c vocabulary: token {i} {p!r} is not valid UTF-8") from e
        if 3 <= i < 259 and s != f"<0x{i - 3:02X}>":
            raise ValueError(f"llama2.c vocabulary: token {i} is {s!r}, expected the byte token <0x{i - 3:02X}>")
        if _SPIECE_SPACE in s:
            raise ValueError(f"llama2.c vocabulary: token {i} {s!r} holds U+2581, which tokenizer.json uses for spaces")
        out.append(s.replace(" ", _SPIECE_SPACE))
    if len(set(out)) != len(out):
        raise ValueError("llama2.c vocabulary: repeated token strings")
    return out


def llama2c_merges(tokens, scores):
    """[(left, right)] in rank order: every split of a token (ids >= 3) into two tokens
    (ids >= 3), ordered by the token's score, highest first; ties by token id, then by
    the left part's length."""
    index = {t: i for i, t in enumerate(tokens) if i >= 3}
    ranked = []
    for tid in range(3, len(tokens)):
        t = tokens[tid]
        for k in range(1, len(t)):
            if t[:k] in index and t[k:] in index:
                ranked.append((-scores[tid], tid, k))
    ranked.sort()
    return [(tokens[tid][:k], tokens[tid][k:]) for _, tid, k in ranked]


def llama2c_tokenizer_to_hf(tok_path, vocab_size, model_max_length=None):
    """(tokenizer.json content, tokenizer_config.json content), two dicts, equivalent to a
    llama2.c tokenizer file: the same ids as llama2.c's encoder, BOS <s> (id 1) added."""
    return llama2c_tokenizer_json(tok_path, vocab_size), llama2c_tokenizer_config(model_max_length)


def llama2c_tokenizer_json(tok_path, vocab_size):
    """tokenizer.json content (a dict) equivalent to a llama2.c tokenizer file."""
    pieces, scores = read_llama2c_vocab(tok_path, vocab_size)
    tokens = llama2c_token_strings(pieces)
    merges = llama2c_merges(tokens, scores)
    if any(" " in a or " " in b for a, b in merges):
        merges_json = [[a, b] for a, b in merges]
    else:
        merges_json = [f"{a} {b}" for a, b in merges]
    special = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True} for i, t in enumerate(LLAMA2C_SPECIAL_TOKENS)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": _SPIECE_SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": _SPIECE_SPACE}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": _SPIECE_SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": merges_json},
    }


def llama2c_tokenizer_config(model_max_length=None):
    """tokenizer_config.json content for a converted llama2.c tokenizer: BOS (<s>, id 1)
    added, no EOS (</s>, id 2), <unk> id 0."""
    cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
                                 for i, t in enumerate(LLAMA2C_SPECIAL_TOKENS)},
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "tokenizer_class": "LlamaTokenizer",
    }
    if model_max_length is not None:
        cfg["model_max_length"] = int(model_max_length)
    return cfg


def save_llama2c_tokenizer_hf(tok_path, vocab_size, folder, model_max_length=None):
    """Writes tokenizer.json and tokenizer_config.json of a llama2.c tokenizer into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok_json, tok_config = llama2c_tokenizer_to_hf(tok_path, vocab_size, model_max_length)
    (folder / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False, indent=1), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, ensure_ascii=False, indent=1), encoding="utf-8")

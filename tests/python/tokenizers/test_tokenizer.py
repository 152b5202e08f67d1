"""lowbit.tokenizers (Hugging Face tokenizer.json without `tokenizers`) and the llama2.c
vocabulary -> tokenizer.json converter.

The tokenizer.json files here are hand-made with tiny vocabularies; every expected id list
was worked out by hand from the merges written next to it.
"""
import json
import random
import struct
import time

import pytest

from lowbit.tokenizers import HFTokenizer, load_hf_tokenizer
from lowbit.tokenizers.pretokenizers import BYTE_TO_CHAR
from lowbit.tokenizers.unicode_regex import compile_onig

SP = "\u2581"
SPECIALS = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for i, t in enumerate(["<unk>", "<s>", "</s>"])]
LEGACY_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": SP}, {"type": "Replace", "pattern": {"String": " "}, "content": SP}]}
LEGACY_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": SP}, "content": " "}, {"type": "ByteFallback"},
    {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
BOS_TEMPLATE = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}

# SentencePiece-style vocabulary: 0-2 specials, 3-258 <0x00>..<0xFF>, then these.
SP_WORDS = [SP, "a", "b", "c", "ab", "bc", SP + "a", "aa"]
SP_VOCAB = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)},
            **{t: 259 + i for i, t in enumerate(SP_WORDS)}}
U, A, B, C, AB, BC, UA, AA = range(259, 267)  # ids of SP_WORDS


def sp_spec(merges=("b c", "a b", f"{SP} a", "a a"), byte_fallback=True, fuse_unk=True, normalizer=LEGACY_NORMALIZER,
            pre_tokenizer=None, post_processor=BOS_TEMPLATE):
    return {"version": "1.0", "added_tokens": SPECIALS, "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor, "decoder": LEGACY_DECODER,
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "fuse_unk": fuse_unk,
                      "byte_fallback": byte_fallback, "vocab": SP_VOCAB, "merges": list(merges)}}


# Byte-level vocabulary: the token of byte b (in GPT-2's printable alphabet) has id b.
BL_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("'", "s"), ("1", "2"), ("Ġ", "Ġ")]
T_SPACE_T, T_HE, T_SPACE_THE, T_APOS_S, T_12, T_2SPACE, T_SPACE_CAT, T_IM_START, T_IM = range(256, 265)
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def bl_spec(pre_tokenizer, ignore_merges=False, merges_as_pairs=False):
    vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
    for a, b in BL_MERGES:
        vocab[a + b] = len(vocab)
    vocab["Ġcat"] = T_SPACE_CAT  # a token no merge builds
    merges = [[a, b] for a, b in BL_MERGES] if merges_as_pairs else [f"{a} {b}" for a, b in BL_MERGES]
    added = [{"id": T_IM_START, "content": "<|im_start|>", "single_word": False, "lstrip": False, "rstrip": True,
              "normalized": False, "special": True},
             {"id": T_IM, "content": "<|im", "single_word": False, "lstrip": True, "rstrip": False,
              "normalized": False, "special": False}]
    return {"version": "1.0", "added_tokens": added, "normalizer": None, "pre_tokenizer": pre_tokenizer,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "byte_fallback": False,
                      "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}}


LLAMA3_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
GPT2_PRE = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def write_folder(path, spec, config=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    if config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


# ---------------------------------------------------------------- SentencePiece-style family

def test_sp_merges_by_rank_order(tmp_path):
    # "abc" -> "▁abc" = ▁ a b c. Ranks: (b,c)=0, (a,b)=1, (▁,a)=2: b+c first, then ▁+a.
    tok = load_hf_tokenizer(write_folder(tmp_path / "x", sp_spec()))
    assert tok.family == "sentencepiece"
    assert tok.encode("abc", add_bos=False) == [UA, BC] == [265, 264]
    # With (a,b) ranked first: ▁ ab c, and no merge joins ▁+ab or ab+c.
    tok = HFTokenizer(sp_spec(merges=("a b", "b c", f"{SP} a")))
    assert tok.encode("abc", add_bos=False) == [U, AB, C] == [259, 263, 262]
    # "aaa" -> ▁ a a a: (▁,a)=2 goes before both (a,a)=3, whose left one is then gone: ▁a aa
    assert HFTokenizer(sp_spec()).encode("aaa", add_bos=False) == [UA, AA]
    # without the ▁+a merge the two equal-rank a+a candidates go leftmost first: ▁ aa a
    assert HFTokenizer(sp_spec(merges=("a a",))).encode("aaa", add_bos=False) == [U, AA, A]
    # merges written as [a, b] pairs work the same as "a b" strings
    assert HFTokenizer(sp_spec(merges=(["b", "c"], ["a", "b"], [SP, "a"]))).encode("abc", add_bos=False) == [UA, BC]


def test_sp_spaces_and_bos():
    tok = HFTokenizer(sp_spec())
    # " " -> ▁; "ab c" -> "▁ab▁c" = ▁ a b ▁ c; (a,b)=1 goes before (▁,a)=2: ▁ ab ▁ c
    assert tok.encode("ab c") == [1, U, AB, U, C]
    assert tok.encode("ca") == [1, U, C, A]
    assert tok.encode("") == [1]
    assert tok.bos_id == 1 and tok.eos_id is None and tok.vocab_size == 267
    assert tok.id_to_token(UA) == SP + "a" and tok.token_to_id("bc") == BC and tok.token_to_id("zz") is None


def test_sp_byte_fallback_and_unk():
    tok = HFTokenizer(sp_spec())
    # é = C3 A9, 🙂 = F0 9F 99 82; <0xNN> has id 3 + NN
    assert tok.encode("aé", add_bos=False) == [UA, 3 + 0xC3, 3 + 0xA9] == [265, 198, 172]
    assert tok.encode("🙂", add_bos=False) == [U, 243, 162, 156, 133]
    assert tok.decode(tok.encode("aé 🙂b")) == "aé 🙂b"
    # without byte_fallback an unknown character is <unk>; fuse_unk joins a run of them
    assert HFTokenizer(sp_spec(byte_fallback=False)).encode("aéé c", add_bos=False) == [UA, 0, U, C]
    assert HFTokenizer(sp_spec(byte_fallback=False, fuse_unk=False)).encode("aéé", add_bos=False) == [UA, 0, 0]


def test_sp_special_tokens_in_text():
    tok = HFTokenizer(sp_spec())
    # "</s>" is cut out before normalization; each side is normalized alone (the legacy
    # Llama behaviour: "b" becomes "▁b")
    assert tok.encode("a</s>b") == [1, UA, 2, U, B]
    assert tok.encode("<s>ab") == [1, 1, U, AB]
    assert tok.encode("a<s") == [1, UA, 3 + ord("<"), 3 + ord("s")]  # not a full special token
    # Metaspace with prepend_scheme "first" (newer Llama files) adds ▁ only at the start
    meta = sp_spec(normalizer=None, pre_tokenizer={"type": "Metaspace", "replacement": SP, "prepend_scheme": "first", "split": False})
    assert HFTokenizer(meta).encode("a</s>b c") == [1, UA, 2, B, U, C]
    assert HFTokenizer(meta).encode("</s>b") == [1, 2, B]


def test_sp_decode():
    tok = HFTokenizer(sp_spec())
    assert tok.decode([1, UA, BC, U, C, 2]) == "abc c"
    assert tok.decode([1, UA, BC, 2], skip_special_tokens=False) == "<s> abc</s>"
    assert tok.decode([U, U, A]) == " a"  # only one leading space is stripped
    assert tok.decode([UA, 3 + 0xC3]) == "a\ufffd"  # an incomplete UTF-8 byte run
    assert tok.decode([UA, 3 + 0xE2, 3 + 0x82, C]) == "a\ufffd\ufffdc"  # one U+FFFD per byte of a bad run
    for text in ["abc", " a  b", "é🙂\n\tc", "a", "c b a"]:
        assert tok.decode(tok.encode(text)) == text
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.decode([9999])


def test_bos_eos_from_tokenizer_config(tmp_path):
    spec = sp_spec()
    # no tokenizer_config.json: the TemplateProcessing post-processor adds <s>
    assert load_hf_tokenizer(write_folder(tmp_path / "a", spec)).encode("a") == [1, UA]
    cfg = {"add_bos_token": True, "add_eos_token": True, "bos_token": {"content": "<s>", "lstrip": False},
           "eos_token": "</s>", "unk_token": "<unk>"}
    tok = load_hf_tokenizer(write_folder(tmp_path / "b", spec, cfg))
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)
    assert tok.encode("a") == [1, UA, 2]
    assert tok.encode("a", add_bos=False) == [UA, 2]
    assert tok.encode("a", add_bos=False, add_eos=False) == [UA]
    cfg = {"add_bos_token": False, "bos_token": "<s>", "eos_token": "</s>"}
    tok = load_hf_tokenizer(write_folder(tmp_path / "c", spec, cfg))
    assert tok.encode("a") == [UA]
    assert tok.encode("a", add_bos=True, add_eos=True) == [1, UA, 2]
    with pytest.raises(ValueError, match="eos_token"):
        load_hf_tokenizer(write_folder(tmp_path / "d", spec, {"add_eos_token": True, "eos_token": None}))
    with pytest.raises(ValueError, match="not a token"):
        load_hf_tokenizer(write_folder(tmp_path / "e", spec, {"bos_token": "<bos>"}))


# ---------------------------------------------------------------- byte-level family

def test_byte_alphabet():
    # GPT-2's map: printable Latin-1 bytes are themselves, the rest U+0100.. in byte order
    assert BYTE_TO_CHAR[ord("a")] == "a" and BYTE_TO_CHAR[0xA9] == "©" and BYTE_TO_CHAR[0xC3] == "Ã"
    assert BYTE_TO_CHAR[32] == "Ġ" and BYTE_TO_CHAR[10] == "Ċ" and BYTE_TO_CHAR[0] == "Ā"
    assert BYTE_TO_CHAR[0x9F] == "Ł" and BYTE_TO_CHAR[0xAD] == "Ń"
    assert len(set(BYTE_TO_CHAR.values())) == 256


def test_llama3_split_contractions_numbers_punctuation_whitespace():
    tok = HFTokenizer(bl_spec(LLAMA3_PRE))
    assert tok.family == "byte_level"
    text = "the cat's 12345 !!\n\n  x"
    # pieces: "the" " cat" "'s" " " "123" "45" " !!\n\n" " " " x"
    pieces = [p for p, _ in tok.pre_tokenize([(text, True)])]
    assert pieces == ["the", "Ġcat", "'s", "Ġ", "123", "45", "Ġ!!ĊĊ", "Ġ", "Ġx"]
    # the: t h e -> t he; 123: 12 3; ' s -> 's
    assert tok.encode(text) == [116, T_HE, 32, 99, 97, 116, T_APOS_S, 32, T_12, 51, 52, 53,
                                32, 33, 33, 10, 10, 32, 32, 120]
    # " the": Ġ t h e -> Ġt h e -> Ġt he -> Ġthe
    assert tok.encode(" the") == [T_SPACE_THE]
    # contractions match case-insensitively; "don't" -> "don" "'t"
    assert [p for p, _ in tok.pre_tokenize([("I'LL don't", True)])] == ["I", "'LL", "Ġdon", "'t"]
    # a run of spaces before a word: all but the last stay together, the last joins the word
    assert tok.encode("a   b") == [97, T_2SPACE, 32, 98]
    # \p{N} / \p{L} beyond ASCII: Arabic-Indic digits and superscripts are numbers, é a letter
    # (at most three digits a piece)
    assert [p for p, _ in tok.pre_tokenize([("x²٣٤٥ é", True)])] == ["x", "Â²Ù£Ù¤", "Ù¥", "ĠÃ©"]


def test_gpt2_byte_level_regex():
    tok = HFTokenizer(bl_spec(GPT2_PRE))
    # GPT-2's pattern keeps a number run whole (" ?\p{N}+") and splits "'s" from letters
    assert [p for p, _ in tok.pre_tokenize([("it's 12345  x", True)])] == ["it", "'s", "Ġ12345", "Ġ", "Ġx"]
    assert tok.encode("it's 12345") == [105, 116, T_APOS_S, 32, T_12, 51, 52, 53]
    # UTF-8 bytes are the ids here: é = C3 A9, 🙂 = F0 9F 99 82
    assert tok.encode("é🙂") == [0xC3, 0xA9, 0xF0, 0x9F, 0x99, 0x82]
    add_prefix = dict(GPT2_PRE, add_prefix_space=True)
    assert HFTokenizer(bl_spec(add_prefix)).encode("the") == [T_SPACE_THE]


def test_byte_level_decode_and_special_tokens():
    tok = HFTokenizer(bl_spec(LLAMA3_PRE))
    assert tok.decode([T_SPACE_THE, 32, 0xC3, 0xA9]) == " the é"
    assert tok.decode([0xF0, 0x9F]) == "\ufffd"
    assert tok.encode("hi<|im_start|>the") == [104, 105, T_IM_START, 116, T_HE]
    # leftmost-longest among added tokens; rstrip / lstrip swallow the whitespace beside them
    assert tok.encode("<|im_start|><|im") == [T_IM_START, T_IM]
    assert tok.encode("<|im_start|> \n the") == [T_IM_START, 116, T_HE]
    assert tok.encode("hi \t<|im_start") == [104, 105, T_IM, 95, 115, 116, 97, 114, 116]
    assert tok.decode([T_IM, T_IM_START, 97]) == "<|ima"  # <|im is not special: kept
    assert tok.decode([104, 105, T_IM_START, T_SPACE_THE]) == "hi the"
    assert tok.decode([104, 105, T_IM_START, T_SPACE_THE], skip_special_tokens=False) == "hi<|im_start|> the"
    for text in ["the cat's 12345 !!\n\n  x", "é🙂 \t\r\n x", "", "   "]:
        assert tok.decode(tok.encode(text)) == text


def test_ignore_merges():
    # " cat" is the vocab token Ġcat, which no merge builds
    assert HFTokenizer(bl_spec(LLAMA3_PRE, ignore_merges=False)).encode(" cat") == [32, 99, 97, 116]
    assert HFTokenizer(bl_spec(LLAMA3_PRE, ignore_merges=True)).encode(" cat") == [T_SPACE_CAT]
    assert HFTokenizer(bl_spec(LLAMA3_PRE, ignore_merges=True, merges_as_pairs=True)).encode(" cat the") == [T_SPACE_CAT, T_SPACE_THE]


def test_split_behaviors():
    def pieces(behavior, invert=False):
        pre = {"type": "Split", "pattern": {"String": "-"}, "behavior": behavior, "invert": invert}
        return [p for p, _ in HFTokenizer(bl_spec(pre)).pre_tokenize([("a-b--c-", True)])]
    assert pieces("Isolated") == ["a", "-", "b", "-", "-", "c", "-"]
    assert pieces("Removed") == ["a", "b", "c"]
    assert pieces("MergedWithPrevious") == ["a-", "b-", "-", "c-"]
    assert pieces("MergedWithNext") == ["a", "-b", "-", "-c", "-"]
    assert pieces("Contiguous") == ["a", "-", "b", "--", "c", "-"]
    assert pieces("Removed", invert=True) == ["-", "-", "-", "-"]  # each match is its own piece


def test_onig_regex_translation():
    letters = compile_onig(r"\p{L}+")
    assert letters.fullmatch("héllo日本") and not letters.match("1")
    assert compile_onig(r"[^\s\p{L}\p{N}]+").fullmatch("!?…") and not compile_onig(r"[^\s\p{L}\p{N}]").match("٣")
    assert compile_onig(r"\s").match("\u3000") and not compile_onig(r"\s").match("\x1c")  # Python's \s matches \x1c
    assert compile_onig(r"\P{L}").match("1") and not compile_onig(r"\P{L}").match("a")
    assert compile_onig(r"\x{1F642}").match("🙂")
    for bad, what in [(r"\p{Han}", "Han"), (r"\d+", r"\\d"), (r"[a-z&&[^b]]", "intersection"), (r"[a[b]]", "nested"), ("^a", "anchor"), (r"(?<x>a)", "named")]:
        with pytest.raises(ValueError, match=what):
            compile_onig(bad)


# ---------------------------------------------------------------- unsupported files

@pytest.mark.parametrize("edit, field", [
    (lambda s: s["model"].update(type="Unigram"), "model.type 'Unigram'"),
    (lambda s: s["model"].update(type="WordPiece"), "model.type 'WordPiece'"),
    (lambda s: s.update(normalizer={"type": "Precompiled", "precompiled_charsmap": ""}), "normalizer.type 'Precompiled'"),
    (lambda s: s.update(normalizer={"type": "Sequence", "normalizers": [{"type": "BertNormalizer"}]}), r"normalizer.normalizers\[0\].type"),
    (lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer.type 'Whitespace'"),
    (lambda s: s.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": r"\p{Han}+"}, "behavior": "Isolated"}), "Han"),
    (lambda s: s.update(decoder={"type": "WordPiece"}), "decoder.type 'WordPiece'"),
    (lambda s: s.update(post_processor={"type": "RobertaProcessing"}), "post_processor.type"),
    (lambda s: s["model"].update(dropout=0.1), "model.dropout"),
    (lambda s: s["model"].update(continuing_subword_prefix="##"), "continuing_subword_prefix"),
    (lambda s: s["model"].update(merges=["a b c"]), r"model.merges\[0\]"),
    (lambda s: s["model"].update(merges=["a z"]), "not in model.vocab"),
    (lambda s: s.update(added_tokens=SPECIALS + [dict(SPECIALS[0], id=999, content="<x>")]), "would give it id 267"),
    (lambda s: s.update(added_tokens=[dict(SPECIALS[0], single_word=True)]), "single_word"),
])
def test_unsupported_fields_raise(edit, field):
    spec = json.loads(json.dumps(sp_spec()))
    edit(spec)
    with pytest.raises(ValueError, match=field):
        HFTokenizer(spec)


def test_unknown_character_without_unk_raises():
    spec = sp_spec(byte_fallback=False)
    spec["model"]["unk_token"] = None
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HFTokenizer(spec).encode("é")


def test_encoding_speed():
    tok = HFTokenizer(sp_spec())
    rng = random.Random(0)
    words = ["".join(rng.choice("abcé") for _ in range(rng.randint(1, 8))) for _ in range(300)]
    paras = [" ".join(rng.choice(words) for _ in range(150)) for _ in range(100)]
    t0 = time.perf_counter()
    out = [tok.encode(p) for p in paras]
    assert time.perf_counter() - t0 < 1.0
    assert all(tok.decode(ids) == p for ids, p in zip(out, paras))


# ---------------------------------------------------------------- llama2.c converter

def _write_llama2c_vocab(path, pieces, scores):
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(p) for p in pieces)))
        for p, s in zip(pieces, scores):
            f.write(struct.pack("<fi", s, len(p)) + p)


def test_llama2c_converter_small(tmp_path):
    from lowbit.models.convert_llama2c import llama2c_tokenizer_to_hf
    from lowbit.models.llama2c import load_tokenizer
    words = [b" ", b"a", b"b", b"c", b"ab", b"bc", b" a", b"abc", b" ab"]
    word_scores = [-100.0, -101.0, -102.0, -103.0, -1.0, -2.0, -3.0, -4.0, -5.0]
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{b:02X}>".encode() for b in range(256)] + words
    scores = [0.0] * 259 + word_scores
    path = tmp_path / "tok.bin"
    _write_llama2c_vocab(path, pieces, scores)
    spec, cfg = llama2c_tokenizer_to_hf(path, len(pieces))
    # each split of each token into two tokens, by the token's score, then left length
    assert spec["model"]["merges"] == ["a b", "b c", f"{SP} a", "a bc", "ab c", f"{SP} ab", f"{SP}a b"]
    assert spec["model"]["vocab"]["<s>"] == 1 and spec["model"]["vocab"][f"{SP}ab"] == 267
    assert cfg["add_bos_token"] is True and (cfg["bos_token"], cfg["eos_token"], cfg["unk_token"]) == ("<s>", "</s>", "<unk>")
    tok = load_hf_tokenizer(write_folder(tmp_path / "hf", spec, cfg))
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)
    ref = load_tokenizer(path, len(pieces))
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice("abc é") for _ in range(rng.randint(0, 20)))
        assert tok.encode(text) == ref.encode(text), text
    # " abc ab": ab+ab first (-1), then ab+c (-4), then ▁+ab (-5)
    assert tok.encode("abc ab") == [1, 259, 266, 267]


def test_llama2c_tok512_matches_llama2c_on_protocol_paragraphs(shared_data, tmp_path):
    from lowbit.eval.lm import CALIB_RANGE, EVAL_RANGE, paragraphs
    from lowbit.models.convert_llama2c import save_llama2c_tokenizer_hf
    from lowbit.models.llama2c import load_tokenizer
    tok_path = shared_data / "models" / "tok512.bin"
    save_llama2c_tokenizer_hf(tok_path, 512, tmp_path / "hf")
    tok = load_hf_tokenizer(tmp_path / "hf")
    ref = load_tokenizer(tok_path, 512)
    assert tok.vocab_size == 512 and tok.bos_id == 1 and tok.eos_id == 2
    paras = paragraphs()
    chosen = paras[EVAL_RANGE[0]:EVAL_RANGE[1]] + paras[CALIB_RANGE[0]:CALIB_RANGE[1]]
    assert len(chosen) == 228
    t0 = time.perf_counter()
    got = [tok.encode(p) for p in chosen[:100]]
    assert time.perf_counter() - t0 < 1.0
    got += [tok.encode(p) for p in chosen[100:]]
    differ = [i for i, (g, p) in enumerate(zip(got, chosen)) if g != ref.encode(p, bos=True)]
    assert differ == [], f"{len(differ)} paragraphs tokenize differently, first {differ[:5]}"
    assert all(g[0] == 1 for g in got)
    bad = [i for i, (g, p) in enumerate(zip(got, chosen)) if tok.decode(g) != p]
    assert bad == []

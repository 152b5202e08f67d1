"""Hugging Face ``tokenizer.json`` (model type BPE) without the ``tokenizers`` package.

Encoding follows the ``tokenizers`` pipeline: added tokens are cut out of the text first
(``normalized: false`` ones from the raw text, ``normalized: true`` ones from each
normalized segment, leftmost-longest, with ``lstrip`` / ``rstrip``), every other segment
is normalized, pre-tokenized and run through BPE, then BOS/EOS are added. Which ones:
``tokenizer_config.json``'s ``add_bos_token`` / ``add_eos_token`` where given, else what
the ``TemplateProcessing`` post-processor of tokenizer.json puts around a single text.
Fields that would change the result and are not implemented raise ValueError naming the
field; ``truncation`` and ``padding`` are ignored (callers truncate themselves).
"""
import json
import re
from pathlib import Path

from lowbit.tokenizers.bpe import BPE, parse_merges
from lowbit.tokenizers.decoders import build_decoder
from lowbit.tokenizers.normalizers import build_normalizer
from lowbit.tokenizers.pretokenizers import build_pre_tokenizer
from lowbit.tokenizers.unicode_regex import is_white_space


def _token_name(value, where):
    """A special token as written in tokenizer_config.json: "text", {"content": "text"} or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{where} must be a string, an object with 'content', or null, got {value!r}")


class _Added:
    __slots__ = ("id", "content", "special", "lstrip", "rstrip", "normalized")

    def __init__(self, entry, where):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or not isinstance(entry.get("content"), str):
            raise ValueError(f"tokenizer.json: {where} needs an integer 'id' and a string 'content', got {entry!r}")
        if entry.get("single_word", False):
            raise ValueError(f"tokenizer.json: {where}.single_word true ({entry['content']!r}) is not supported")
        if entry["content"] == "":
            raise ValueError(f"tokenizer.json: {where}.content is empty")
        self.id, self.content = entry["id"], entry["content"]
        self.special = bool(entry.get("special", False))
        self.lstrip, self.rstrip = bool(entry.get("lstrip", False)), bool(entry.get("rstrip", False))
        self.normalized = bool(entry.get("normalized", not self.special))


class _Matcher:
    """Finds added tokens in a text, leftmost-longest, as ``tokenizers`` does."""

    def __init__(self, by_pattern):
        self.by_pattern = by_pattern  # pattern text -> _Added
        alts = sorted(by_pattern, key=lambda p: (-len(p), p))
        self.regex = re.compile("|".join(map(re.escape, alts))) if alts else None

    def split(self, text, first):
        """[(segment text or an _Added, starts at offset 0 of the input)]."""
        if self.regex is None:
            return [(text, first)] if text else []
        out, done = [], 0
        for m in self.regex.finditer(text):
            tok = self.by_pattern[m.group()]
            s, e = m.span()
            if tok.lstrip:
                while s > 0 and is_white_space(text[s - 1]):
                    s -= 1
            if tok.rstrip:
                while e < len(text) and is_white_space(text[e]):
                    e += 1
            s = max(s, done)
            if s > done:
                out.append((text[done:s], first and done == 0))
            out.append((tok, False))
            done = max(done, e)
        if done < len(text):
            out.append((text[done:], first and done == 0))
        return out


def _template(spec, where, special_ids):
    """(prefix ids, suffix ids) that the post-processor puts around a single text."""
    if spec is None:
        return [], []
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "ByteLevel":  # offsets only
        return [], []
    if kind == "Sequence":
        pre, suf = [], []
        for i, p in enumerate(spec.get("processors", [])):
            a, b = _template(p, f"{where}.processors[{i}]", special_ids)
            pre, suf = a + pre, suf + b
        return pre, suf
    if kind == "TemplateProcessing":
        specials = spec.get("special_tokens", {}) or {}
        pre, suf, seen = [], [], False
        for i, item in enumerate(spec.get("single", [])):
            if isinstance(item, dict) and "Sequence" in item:
                if item["Sequence"].get("id") != "A" or seen:
                    raise ValueError(f"tokenizer.json: {where}.single[{i}]: only one sequence $A is supported")
                seen = True
            elif isinstance(item, dict) and "SpecialToken" in item:
                name = item["SpecialToken"].get("id")
                ids = specials.get(name, {}).get("ids")
                if ids is None:
                    ids = [special_ids(name, f"{where}.single[{i}]")]
                (suf if seen else pre).extend(ids)
            else:
                raise ValueError(f"tokenizer.json: {where}.single[{i}] {item!r} is not a SpecialToken or Sequence")
        if not seen:
            raise ValueError(f"tokenizer.json: {where}.single has no $A sequence")
        return pre, suf
    raise ValueError(f"tokenizer.json: {where}.type {kind!r} is not supported (supported: TemplateProcessing, ByteLevel, Sequence, null)")


def _family(spec):
    text = json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    if '"ByteLevel"' in text:
        return "byte_level"
    if spec["model"].get("byte_fallback") or '"Metaspace"' in text or "\u2581" in json.dumps(spec.get("normalizer"), ensure_ascii=False):
        return "sentencepiece"
    return "bpe"


class HFTokenizer:
    """encode / decode with a parsed tokenizer.json (and optional tokenizer_config.json)."""

    def __init__(self, spec, config=None, special_tokens_map=None):
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
            raise ValueError("tokenizer.json: no 'model' object")
        model = spec["model"]
        mtype = model.get("type", "BPE" if "merges" in model else None)
        if mtype != "BPE":
            raise ValueError(f"tokenizer.json: model.type {mtype!r} is not supported (supported: BPE)")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise ValueError("tokenizer.json: model.vocab must map token strings to integer ids")
        if model.get("dropout") not in (None, 0, 0.0):
            raise ValueError(f"tokenizer.json: model.dropout {model['dropout']!r} is not supported (random merges; supported: null)")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key) not in (None, ""):
                raise ValueError(f"tokenizer.json: model.{key} {model[key]!r} is not supported (supported: null)")
        self.model = BPE(vocab, parse_merges(model.get("merges", [])), unk_token=model.get("unk_token"),
                         byte_fallback=bool(model.get("byte_fallback", False)),
                         fuse_unk=bool(model.get("fuse_unk", False)), ignore_merges=bool(model.get("ignore_merges", False)))
        self.family = _family(spec)
        self._id_to_token = {i: t for t, i in vocab.items()}
        self.normalize = build_normalizer(spec.get("normalizer"))
        self.pre_tokenize = build_pre_tokenizer(spec.get("pre_tokenizer"))
        self.decoder = build_decoder(spec.get("decoder"))

        self.added = {}
        raw, normalized = {}, {}
        for i, entry in enumerate(spec.get("added_tokens", []) or []):
            tok = _Added(entry, f"added_tokens[{i}]")
            # `tokenizers` gives an added token its model.vocab id, else the next free id
            # after the vocabulary and the added tokens before it; it ignores the id written
            # in the file, so a file whose ids disagree is refused rather than guessed at.
            if tok.content in vocab:
                expected = vocab[tok.content]
            elif self.added:
                top = max(self.added)
                expected = top + 1 if top >= len(vocab) else len(vocab)
            else:
                expected = len(vocab)
            if tok.id != expected or any(t.content == tok.content for t in self.added.values()):
                raise ValueError(f"tokenizer.json: added_tokens[{i}] {tok.content!r} has id {tok.id}, but tokenizers "
                                 f"would give it id {expected} (its model.vocab id, else the next free id), or it is repeated")
            self.added[tok.id] = tok
            if tok.normalized and self.normalize is not None:
                pattern = self.normalize(tok.content)
                if pattern:
                    normalized[pattern] = tok
            else:
                raw[tok.content] = tok
        self._added_by_content = {t.content: t.id for t in self.added.values()}
        self._raw = _Matcher(raw)
        self._normalized = _Matcher(normalized) if normalized else None
        self.vocab_size = 1 + max(list(vocab.values()) + list(self.added), default=-1)

        config = dict(config or {})
        smap = dict(special_tokens_map or {})

        def named(key):
            where = f"tokenizer_config.json: {key}"
            name = _token_name(config[key], where) if key in config else _token_name(smap.get(key), f"special_tokens_map.json: {key}")
            if name is None:
                return None
            tid = self.token_to_id(name)
            if tid is None:
                raise ValueError(f"{where} {name!r} is not a token of tokenizer.json")
            return tid

        def special_ids(name, where):
            tid = self.token_to_id(name)
            if tid is None:
                raise ValueError(f"tokenizer.json: {where}: special token {name!r} is unknown")
            return tid

        prefix, suffix = _template(spec.get("post_processor"), "post_processor", special_ids)
        self.bos_id, self.eos_id, self.unk_id = named("bos_token"), named("eos_token"), named("unk_token")
        if self.bos_id is None and len(prefix) == 1:
            self.bos_id = prefix[0]
        if self.eos_id is None and len(suffix) == 1:
            self.eos_id = suffix[0]
        if self.unk_id is None:
            self.unk_id = self.model.unk_id
        for key, side in (("add_bos_token", "bos"), ("add_eos_token", "eos")):
            if key not in config:
                continue
            if not isinstance(config[key], bool):
                raise ValueError(f"tokenizer_config.json: {key} must be true or false, got {config[key]!r}")
            tid = self.bos_id if side == "bos" else self.eos_id
            if config[key] and tid is None:
                raise ValueError(f"tokenizer_config.json: {key} is true but no {side}_token is defined")
            if side == "bos":
                prefix = [tid] if config[key] else []
            else:
                suffix = [tid] if config[key] else []
        self.prefix_ids, self.suffix_ids = prefix, suffix

    # -- vocabulary
    def id_to_token(self, i):
        tok = self.added.get(i)
        return tok.content if tok is not None else self._id_to_token.get(i)

    def token_to_id(self, s):
        tid = self._added_by_content.get(s)
        return tid if tid is not None else self.model.vocab.get(s)

    # -- encode / decode
    def _encode_segment(self, text, first, out):
        pieces = [(text, first)]
        if self.pre_tokenize is not None:
            pieces = self.pre_tokenize(pieces)
        tokenize = self.model.tokenize
        for piece, _ in pieces:
            out.extend(tokenize(piece))

    def encode(self, text, add_bos=None, add_eos=None):
        """Token ids of ``text``. ``add_bos`` / ``add_eos``: None follows the tokenizer's
        files (see the module docstring), True / False force the BOS / EOS id on or off."""
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be a str, got {type(text).__name__}")
        out = []
        for seg, first in self._raw.split(text, True):
            if isinstance(seg, _Added):
                out.append(seg.id)
                continue
            norm = self.normalize(seg) if self.normalize is not None else seg
            parts = self._normalized.split(norm, first) if self._normalized is not None else [(norm, first)]
            for part, pfirst in parts:
                if isinstance(part, _Added):
                    out.append(part.id)
                elif part:
                    self._encode_segment(part, pfirst, out)
        return self._side(add_bos, self.prefix_ids, self.bos_id, "bos") + out + self._side(add_eos, self.suffix_ids, self.eos_id, "eos")

    @staticmethod
    def _side(flag, default, tid, name):
        if flag is None:
            return list(default)
        if not flag:
            return []
        if tid is None:
            raise ValueError(f"encode: add_{name}=True but the tokenizer defines no {name} token")
        return [tid]

    def decode(self, ids, skip_special_tokens=True):
        """Text of token ids; special added tokens (BOS, EOS, ...) are left out unless
        ``skip_special_tokens`` is False."""
        tokens = []
        for i in ids:
            i = int(i)
            tok = self.added.get(i)
            if tok is not None:
                if not (skip_special_tokens and tok.special):
                    tokens.append(tok.content)
                continue
            t = self._id_to_token.get(i)
            if t is None:
                raise ValueError(f"decode: token id {i} is not in the vocabulary (size {self.vocab_size})")
            tokens.append(t)
        if self.decoder is None:
            return " ".join(tokens)
        return "".join(self.decoder(tokens))


def load_hf_tokenizer(folder):
    """An ``HFTokenizer`` from a Hugging Face folder (or the path of its tokenizer.json);
    tokenizer_config.json and special_tokens_map.json beside it are read when present."""
    path = Path(folder)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")

    def read(p):
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON: {e}") from e
    spec = read(path)
    cfg_path, map_path = path.parent / "tokenizer_config.json", path.parent / "special_tokens_map.json"
    config = read(cfg_path) if cfg_path.exists() else None
    smap = read(map_path) if map_path.exists() else None
    return HFTokenizer(spec, config, smap)

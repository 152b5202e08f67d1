"""tokenizer.json pre-tokenizers: cut a normalized segment into the pieces BPE runs on.

A piece is ``(text, first)``; ``first`` tells that it begins at offset 0 of the input
text (Metaspace's ``prepend_scheme: "first"`` needs it). Supported types: ``ByteLevel``
(``add_prefix_space``, ``use_regex`` with the GPT-2 pattern; pieces come out in the
GPT-2 printable byte alphabet), ``Split`` (``pattern`` ``{"Regex"}`` or ``{"String"}``,
``invert``, ``behavior`` ``Isolated`` / ``Removed`` / ``MergedWithPrevious`` /
``MergedWithNext`` / ``Contiguous``), ``Metaspace`` (``replacement``, ``prepend_scheme``
or the older ``add_prefix_space``, ``split``) and ``Sequence`` of those.
"""
import re

from lowbit.tokenizers.unicode_regex import compile_onig
from lowbit.tokenizers.stages import sequence, stage_kind

# The pattern ByteLevel splits with when use_regex is true (GPT-2's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

_BEHAVIORS = ("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous")


def byte_alphabet():
    """GPT-2's map of the 256 byte values to printable characters: bytes that are printable
    Latin-1 characters map to themselves, the others to U+0100 onwards in byte order."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = byte_alphabet()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
_BYTE_TRANSLATE = [BYTE_TO_CHAR[b] for b in range(256)]


def to_byte_alphabet(text):
    return "".join(_BYTE_TRANSLATE[b] for b in text.encode("utf-8"))


def _spans(regex, text, invert):
    """[(start, end, is_match)] covering ``text``; empty matches are ignored."""
    spans, prev = [], 0
    for m in regex.finditer(text):
        s, e = m.span()
        if s == e:
            continue
        if s > prev:
            spans.append((prev, s, False))
        spans.append((s, e, True))
        prev = e
    if prev < len(text):
        spans.append((prev, len(text), False))
    if invert:
        spans = [(s, e, not k) for s, e, k in spans]
    return spans


def split_spans(spans, behavior):
    """Applies a Split behavior to [(start, end, is_match)]; returns [(start, end)]."""
    if behavior == "Isolated":
        return [(s, e) for s, e, _ in spans]
    if behavior == "Removed":
        return [(s, e) for s, e, k in spans if not k]
    out = []
    if behavior == "MergedWithPrevious":  # a match joins the piece before it
        prev_match = False
        for s, e, k in spans:
            if k and not prev_match and out:
                out[-1][1] = e
            else:
                out.append([s, e])
            prev_match = k
    elif behavior == "MergedWithNext":  # a match joins the piece after it
        prev_match = False
        for s, e, k in reversed(spans):
            if k and not prev_match and out:
                out[-1][0] = s
            else:
                out.append([s, e])
            prev_match = k
        out.reverse()
    elif behavior == "Contiguous":  # runs of matches (and of non-matches) stay together
        prev_match = None
        for s, e, k in spans:
            if k == prev_match and out:
                out[-1][1] = e
            else:
                out.append([s, e])
            prev_match = k
    else:
        raise ValueError(f"split behavior {behavior!r}")
    return [tuple(x) for x in out]


def _split_pieces(pieces, regex, behavior, invert):
    out = []
    for text, first in pieces:
        for s, e in split_spans(_spans(regex, text, invert), behavior):
            if e > s:
                out.append((text[s:e], first and s == 0))
    return out


def _bool(spec, key, default, where):
    v = spec.get(key, default)
    if not isinstance(v, bool):
        raise ValueError(f"tokenizer.json: {where}.{key} must be true or false, got {v!r}")
    return v


def build_pre_tokenizer(spec, where="pre_tokenizer"):
    """A function pieces -> pieces for a tokenizer.json pre_tokenizer (None: identity)."""
    if spec is None:
        return None
    kind = stage_kind(spec, where)
    if kind == "Sequence":
        return sequence(spec, "pretokenizers", build_pre_tokenizer, where)
    if kind == "ByteLevel":
        prefix = _bool(spec, "add_prefix_space", True, where)
        use_regex = _bool(spec, "use_regex", True, where)
        regex = compile_onig(GPT2_PATTERN) if use_regex else None

        def byte_level(pieces):
            if prefix:
                pieces = [(t if t.startswith(" ") else " " + t, f) for t, f in pieces]
            if regex is not None:
                pieces = _split_pieces(pieces, regex, "Isolated", False)
            return [(to_byte_alphabet(t), f) for t, f in pieces]
        return byte_level
    if kind == "Split":
        pat = spec.get("pattern")
        if isinstance(pat, dict) and isinstance(pat.get("Regex"), str):
            regex = compile_onig(pat["Regex"])
        elif isinstance(pat, dict) and isinstance(pat.get("String"), str):
            regex = re.compile(re.escape(pat["String"]))
        else:
            raise ValueError(f"tokenizer.json: {where}.pattern must be {{\"Regex\": ...}} or {{\"String\": ...}}, got {pat!r}")
        behavior = spec.get("behavior", "Isolated")
        if behavior not in _BEHAVIORS:
            raise ValueError(f"tokenizer.json: {where}.behavior {behavior!r} is not supported (supported: {', '.join(_BEHAVIORS)})")
        invert = _bool(spec, "invert", False, where)
        if regex.pattern == "":
            return None
        return lambda pieces: _split_pieces(pieces, regex, behavior, invert)
    if kind == "Metaspace":
        rep = spec.get("replacement", "\u2581")
        if not isinstance(rep, str) or len(rep) != 1:
            raise ValueError(f"tokenizer.json: {where}.replacement must be one character, got {rep!r}")
        scheme = spec.get("prepend_scheme")
        if scheme is None:
            scheme = "always" if _bool(spec, "add_prefix_space", True, where) else "never"
        if scheme not in ("always", "first", "never"):
            raise ValueError(f"tokenizer.json: {where}.prepend_scheme {scheme!r} is not supported (supported: always, first, never)")
        split = _bool(spec, "split", True, where)
        regex = re.compile(re.escape(rep))

        def metaspace(pieces):
            out = []
            for text, first in pieces:
                text = text.replace(" ", rep)
                if not text.startswith(rep) and (scheme == "always" or (scheme == "first" and first)):
                    text = rep + text
                out.append((text, first))
            return _split_pieces(out, regex, "MergedWithNext", False) if split else out
        return metaspace
    raise ValueError(f"tokenizer.json: {where}.type {kind!r} is not supported (supported: ByteLevel, Split, Metaspace, Sequence)")

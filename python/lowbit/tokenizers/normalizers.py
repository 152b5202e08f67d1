"""tokenizer.json normalizers as functions str -> str.

Supported types: ``Sequence``, ``Prepend`` (adds its text in front of a non-empty
segment), ``Replace`` (``pattern`` ``{"String"}`` or ``{"Regex"}``, every occurrence),
``NFC``, ``NFD``, ``NFKC``, ``NFKD``, ``Lowercase`` and ``Strip`` (``strip_left`` /
``strip_right``, Unicode White_Space). Others (``Precompiled``, ``BertNormalizer``,
``StripAccents``, ``Nmt``, ...) raise ValueError.
"""
import re
import unicodedata

from lowbit.tokenizers.unicode_regex import WHITE_SPACE, compile_onig
from lowbit.tokenizers.stages import sequence, stage_kind

_WS = "".join(chr(c) for a, b in WHITE_SPACE for c in range(a, b + 1))
SUPPORTED = ("Sequence", "Prepend", "Replace", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Strip")


def pattern_regex(pat, where):
    """A compiled regex for a tokenizer.json pattern {"String": s} or {"Regex": r}."""
    if isinstance(pat, dict) and isinstance(pat.get("String"), str):
        return re.compile(re.escape(pat["String"]))
    if isinstance(pat, dict) and isinstance(pat.get("Regex"), str):
        return compile_onig(pat["Regex"])
    raise ValueError(f"tokenizer.json: {where}.pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}, got {pat!r}")


def build_normalizer(spec, where="normalizer"):
    """A function str -> str for a tokenizer.json normalizer (None: identity)."""
    if spec is None:
        return None
    kind = stage_kind(spec, where)
    if kind == "Sequence":
        return sequence(spec, "normalizers", build_normalizer, where)
    if kind == "Prepend":
        prefix = spec.get("prepend")
        if not isinstance(prefix, str):
            raise ValueError(f"tokenizer.json: {where}.prepend must be a string, got {prefix!r}")
        return lambda text: prefix + text if text else text
    if kind == "Replace":
        regex = pattern_regex(spec.get("pattern"), where)
        content = spec.get("content")
        if not isinstance(content, str):
            raise ValueError(f"tokenizer.json: {where}.content must be a string, got {content!r}")
        if regex.pattern == "":
            return None
        return lambda text: regex.sub(lambda m: content, text)
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return lambda text: unicodedata.normalize(kind, text)
    if kind == "Lowercase":
        return str.lower
    if kind == "Strip":
        left, right = spec.get("strip_left", True), spec.get("strip_right", True)

        def strip(text):
            if left:
                text = text.lstrip(_WS)
            if right:
                text = text.rstrip(_WS)
            return text
        return strip
    raise ValueError(f"tokenizer.json: {where}.type {kind!r} is not supported (supported: {', '.join(SUPPORTED)})")

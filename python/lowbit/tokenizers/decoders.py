"""tokenizer.json decoders: token strings -> text.

Each step maps a list of token strings to a list of strings (as ``tokenizers`` chains
them); the text is the concatenation of the last list. Supported types: ``ByteLevel``
(GPT-2 byte alphabet back to bytes, invalid UTF-8 replaced by U+FFFD), ``Metaspace``,
``Replace``, ``ByteFallback`` (runs of ``<0xNN>`` tokens back to UTF-8; an invalid run
gives one U+FFFD per byte), ``Fuse``, ``Strip`` (``content``, ``start``, ``stop``) and
``Sequence``. Without a decoder the tokens are joined with spaces.
"""
import re

from lowbit.tokenizers.normalizers import pattern_regex
from lowbit.tokenizers.pretokenizers import CHAR_TO_BYTE
from lowbit.tokenizers.stages import sequence, stage_kind

SUPPORTED = ("ByteLevel", "Metaspace", "Replace", "ByteFallback", "Fuse", "Strip", "Sequence")
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_of_token(token):
    """The byte value of a ``<0xNN>`` token, else None."""
    m = _BYTE_TOKEN.fullmatch(token)
    return int(m.group(1), 16) if m else None


def _byte_level(tokens):
    data = bytearray()
    for t in tokens:
        try:
            data.extend(CHAR_TO_BYTE[c] for c in t)
        except KeyError:  # a token outside the byte alphabet (an added token) stays as it is
            data.extend(t.encode("utf-8"))
    return [data.decode("utf-8", errors="replace")]


def _byte_fallback(tokens):
    out, pending = [], bytearray()

    def flush():
        if pending:
            try:
                out.append(pending.decode("utf-8"))
            except UnicodeDecodeError:
                out.extend("\ufffd" for _ in pending)
            pending.clear()
    for t in tokens:
        b = byte_of_token(t) if len(t) == 6 else None
        if b is None:
            flush()
            out.append(t)
        else:
            pending.append(b)
    flush()
    return out


def build_decoder(spec, where="decoder"):
    """A function list[str] -> list[str] for a tokenizer.json decoder (None: no decoder)."""
    if spec is None:
        return None
    kind = stage_kind(spec, where)
    if kind == "Sequence":
        return sequence(spec, "decoders", build_decoder, where)
    if kind == "ByteLevel":
        return _byte_level
    if kind == "ByteFallback":
        return _byte_fallback
    if kind == "Fuse":
        return lambda tokens: ["".join(tokens)]
    if kind == "Replace":
        regex = pattern_regex(spec.get("pattern"), where)
        content = spec.get("content")
        if not isinstance(content, str):
            raise ValueError(f"tokenizer.json: {where}.content must be a string, got {content!r}")
        return lambda tokens: [regex.sub(lambda m: content, t) for t in tokens]
    if kind == "Strip":
        content, start, stop = spec.get("content", " "), spec.get("start", 0), spec.get("stop", 0)
        if not (isinstance(content, str) and len(content) == 1 and isinstance(start, int) and isinstance(stop, int)):
            raise ValueError(f"tokenizer.json: {where} needs a one-character content and integer start/stop, got {spec!r}")

        def strip(tokens):
            out = []
            for t in tokens:
                a = 0
                while a < min(start, len(t)) and t[a] == content:
                    a += 1
                b = len(t)
                while len(t) - b < stop and b > a and t[b - 1] == content:
                    b -= 1
                out.append(t[a:b])
            return out
        return strip
    if kind == "Metaspace":
        rep = spec.get("replacement", "\u2581")
        scheme = spec.get("prepend_scheme")
        if scheme is None:
            scheme = "always" if spec.get("add_prefix_space", True) else "never"
        if scheme not in ("always", "first", "never"):
            raise ValueError(f"tokenizer.json: {where}.prepend_scheme {scheme!r} is not supported (supported: always, first, never)")

        def metaspace(tokens):
            # the first token loses its replacement characters (the prefix the
            # pre-tokenizer added), the others turn them into spaces
            return [t.replace(rep, "" if i == 0 and scheme != "never" else " ") for i, t in enumerate(tokens)]
        return metaspace
    raise ValueError(f"tokenizer.json: {where}.type {kind!r} is not supported (supported: {', '.join(SUPPORTED)})")

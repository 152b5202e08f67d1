"""Oniguruma-style regular expressions (as written in tokenizer.json) on Python's ``re``.

Hugging Face ``tokenizers`` compiles Split patterns with Oniguruma, which knows Unicode
property classes such as ``\\p{L}`` (letters) and ``\\p{N}`` (numbers); Python's ``re`` does
not. ``translate`` rewrites a pattern into an equivalent ``re`` pattern:

- ``\\p{X}``, ``\\pX``, ``\\P{X}``, ``\\p{^X}`` with a Unicode general category (``L``, ``Lu``,
  ``N``, ``Nd``, ``P``, ``S``, ``Z``, ``M``, ``C`` and their two-letter subcategories, or
  the long names ``Letter``, ``Number``, ...) become explicit code point ranges built from
  ``unicodedata`` (inside or outside a bracket class);
- ``\\s`` / ``\\S`` become the Unicode White_Space set (Python's own ``\\s`` also matches
  U+001C..U+001F, which Oniguruma does not);
- ``\\x{HHHH}`` becomes ``\\UHHHHHHHH``.

Everything else that behaves identically in both engines passes through: literals,
groups, ``(?i:...)``, lookarounds, alternation, greedy/lazy/possessive quantifiers.
Constructs whose meaning differs or that ``re`` lacks raise ``ValueError``: script
properties (``\\p{Han}``), ``\\d \\w \\b`` and other letter escapes, nested classes and
``&&`` intersections, named groups ``(?<name>``, and the ``^`` / ``$`` anchors (line
anchors in Oniguruma). Unicode tables are Python's ``unicodedata`` (the Unicode version
of the running Python), which can differ from the Rust library's for the newest
characters.
"""
import functools
import re
import unicodedata

# Unicode White_Space (what Oniguruma's \s and Rust's char::is_whitespace match).
WHITE_SPACE = ((0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
               (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
               (0x3000, 0x3000))
_WS_CHARS = frozenset(chr(c) for a, b in WHITE_SPACE for c in range(a, b + 1))

_LONG_NAMES = {
    "letter": "L", "cased_letter": "LC", "uppercase_letter": "Lu", "lowercase_letter": "Ll",
    "titlecase_letter": "Lt", "modifier_letter": "Lm", "other_letter": "Lo",
    "mark": "M", "nonspacing_mark": "Mn", "spacing_mark": "Mc", "enclosing_mark": "Me",
    "number": "N", "decimal_number": "Nd", "letter_number": "Nl", "other_number": "No",
    "punctuation": "P", "symbol": "S", "separator": "Z", "other": "C",
    "space_separator": "Zs", "control": "Cc", "format": "Cf",
}
_CATEGORIES = {"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd",
               "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc",
               "Cf", "Cs", "Co", "Cn"}
_PASS_ESCAPES = set("tnrfva")  # same meaning in both engines


def is_white_space(ch):
    return ch in _WS_CHARS


@functools.lru_cache(maxsize=1)
def _category_runs():
    """[(first, last, category)] covering every code point, in order."""
    cat = unicodedata.category
    runs = []
    start, cur = 0, cat(chr(0))
    for c in range(1, 0x110000):
        k = cat(chr(c))
        if k != cur:
            runs.append((start, c - 1, cur))
            start, cur = c, k
    runs.append((start, 0x10FFFF, cur))
    return runs


@functools.lru_cache(maxsize=None)
def category_ranges(name):
    """Code point ranges of a general category name (one or two letters, or a long name)."""
    key = _LONG_NAMES.get(name.lower().replace(" ", "_").replace("-", "_"), name)
    if key == "LC":
        cats = {"Lu", "Ll", "Lt"}
    elif len(key) == 1 and key in "LMNPSZC":
        cats = {c for c in _CATEGORIES if c[0] == key}
    elif key in _CATEGORIES:
        cats = {key}
    else:
        raise ValueError(f"regex: Unicode property \\p{{{name}}} is not supported (supported: general "
                         "categories such as L, Lu, Ll, Lt, Lm, Lo, M, N, Nd, P, S, Z, C; no scripts)")
    out = []
    for a, b, k in _category_runs():
        if k in cats:
            if out and out[-1][1] == a - 1:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
    return tuple(out)


def _complement(ranges):
    out, nxt = [], 0
    for a, b in ranges:
        if a > nxt:
            out.append((nxt, a - 1))
        nxt = b + 1
    if nxt <= 0x10FFFF:
        out.append((nxt, 0x10FFFF))
    return tuple(out)


def _class_body(ranges):
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


def translate(pattern):
    """The ``re`` pattern equivalent to an Oniguruma pattern (see the module docstring)."""
    out = []
    i, n = 0, len(pattern)
    in_class = False

    def emit(ranges, negate):
        if in_class:
            out.append(_class_body(_complement(ranges) if negate else ranges))
        else:
            out.append("[" + ("^" if negate else "") + _class_body(ranges) + "]")

    def bad(what):
        return ValueError(f"regex {pattern!r}: {what} is not supported (supported: literals, groups, "
                          "(?i:...), lookarounds, quantifiers, bracket classes, \\p{category}, \\s, \\S)")

    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise bad("a trailing backslash")
            d = pattern[i + 1]
            if d in "pP":
                if i + 2 < n and pattern[i + 2] == "{":
                    j = pattern.find("}", i + 3)
                    if j < 0:
                        raise bad("an unterminated \\p{")
                    name, i = pattern[i + 3:j], j + 1
                elif i + 2 < n:
                    name, i = pattern[i + 2], i + 3
                else:
                    raise bad("a bare \\p")
                negate = d == "P"
                if name.startswith("^"):
                    negate, name = not negate, name[1:]
                emit(category_ranges(name), negate)
                continue
            if d in "sS":
                emit(WHITE_SPACE, d == "S")
                i += 2
                continue
            if d == "x" and i + 2 < n and pattern[i + 2] == "{":
                j = pattern.find("}", i + 3)
                if j < 0:
                    raise bad("an unterminated \\x{")
                out.append(f"\\U{int(pattern[i + 3:j], 16):08x}")
                i = j + 1
                continue
            if d in "xu" or d in _PASS_ESCAPES or not d.isalnum():
                out.append(pattern[i:i + 2])
                i += 2
                continue
            raise bad(f"the escape \\{d}")
        if in_class:
            if c == "[":
                raise bad("a nested bracket class")
            if c == "&" and pattern.startswith("&&", i):
                raise bad("a class intersection (&&)")
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":  # a literal ']' first in the class
                out.append("\\]")
                i += 1
            continue
        if c in "^$":
            raise bad(f"the anchor {c!r} (a line anchor in Oniguruma)")
        if c == "(" and pattern.startswith("(?<", i) and i + 3 < n and pattern[i + 3] not in "=!":
            raise bad("a named group (?<name>...)")
        if c == "(" and pattern.startswith("(?P", i):
            raise bad("a Python-style (?P...) group")
        out.append(c)
        i += 1
    if in_class:
        raise bad("an unterminated bracket class")
    return "".join(out)


@functools.lru_cache(maxsize=64)
def compile_onig(pattern):
    """``re.compile(translate(pattern))``; ValueError if the pattern is unsupported."""
    try:
        return re.compile(translate(pattern))
    except re.error as e:
        raise ValueError(f"regex {pattern!r}: does not compile as a Python pattern after translation: {e}") from e

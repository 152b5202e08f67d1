"""Test cases read from the format table (``lowbit.formats.FORMAT_INFO``, i.e. the C++
rows of formats/format.cpp), so that a new row is tested without editing the tests."""
from lowbit.formats import FORMAT_INFO


def quant_cases():
    """(format, granularity, group_size, symmetric) for every row: each weight
    granularity it allows (groups of 32 and 64; the block for MX rows), with a zero point
    where the row allows one, per token where it is an activation type."""
    cases = []
    for name, row in FORMAT_INFO.items():
        if row["is_mx"]:
            cases.append((name, "group", row["block"], True))
            continue
        for gran in row["weight_granularities"]:
            sizes = (32, 64) if gran == "group" else (None,)
            for gs in sizes:
                cases.append((name, gran, gs, True))
                if row["allows_asym"]:
                    cases.append((name, gran, gs, False))
        if row["as_input"]:
            cases.append((name, "token", None, True))
    return cases


def weight_cases():
    """(format, granularity, group_size, symmetric) of packed weights, a few per row: every
    weight granularity the row allows (groups of 32, 64, and 96 for integers), each with and
    without a zero point where the row allows one; group_size 0 where there is no group."""
    cases = []
    for name, row in FORMAT_INFO.items():
        if not row["as_weight"]:
            continue
        if row["is_mx"]:
            cases.append((name, "group", row["block"], True))
            continue
        zp = not row["allows_asym"]  # 'symmetric' of the zero-point cases
        for gran in row["weight_granularities"]:
            if gran == "group":
                cases += [(name, "group", 32, True), (name, "group", 64, zp)]
                if row["is_int"]:
                    cases.append((name, "group", 96, True))
            else:
                cases += sorted({(name, gran, 0, True), (name, gran, 0, zp)}, key=lambda c: not c[3])
    return cases


def case_id(case):
    fmt, gran, gs, sym = case
    return f"{fmt}-{gran}{gs or ''}-{'s' if sym else 'a'}"


def names_where(key):
    """The names of the rows whose column ``key`` is true, as the validator's messages list
    them ("int8 and int4", "a, b and c")."""
    return _english([name for name, row in FORMAT_INFO.items() if row[key]])


def names_with(key, value):
    """The same for the rows whose column ``key`` equals ``value``."""
    return _english([name for name, row in FORMAT_INFO.items() if row[key] == value])


def _english(names):
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

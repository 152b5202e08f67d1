"""What the three tokenizer.json pipeline stages (normalizer, pre_tokenizer, decoder) share:
checking a stage's spec and composing a "Sequence" of stages."""


def stage_kind(spec, where):
    """The spec's 'type' (ValueError naming ``where`` when the spec is not an object with one)."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"tokenizer.json: {where} must be an object with a 'type', got {spec!r}")
    return spec["type"]


def sequence(spec, key, build, where):
    """A Sequence stage: the stages listed under ``key``, built by ``build`` and applied in
    order (stages that build to None, the identity, are left out)."""
    steps = [build(s, f"{where}.{key}[{i}]") for i, s in enumerate(spec.get(key, []))]
    steps = [s for s in steps if s is not None]

    def apply(value):
        for step in steps:
            value = step(value)
        return value
    return apply

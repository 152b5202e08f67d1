"""The stories260K checkpoint through the loader and the format report."""
import torch

from lowbit.models import load_llama2c, load_tokenizer
from lowbit.report import REPORT_ROWS, format_report, render


def test_llama2c_loader_reproduces_reference_generation(shared_data):
    model = load_llama2c(shared_data / "models" / "stories260K.bin")
    assert (model.cfg.dim, model.cfg.n_layers, model.cfg.hidden_dim, model.cfg.vocab_size) == (64, 5, 172, 512)
    assert model.output.weight is model.tok_embeddings.weight
    tok = load_tokenizer(shared_data / "models" / "tok512.bin", model.cfg.vocab_size)
    text = tok.decode(model.generate(tok.encode("Once upon a time"), 30))
    assert text.startswith("Once upon a time, there was a little girl named Lily. She loved to play outside in the park.")


def test_format_report_on_stories260k(shared_data):
    model = load_llama2c(shared_data / "models" / "stories260K.bin")
    rows = {(r.fmt, r.granularity, r.group_size, r.symmetric, r.mx_rule): r for r in format_report(model)}
    assert len(rows) == len(REPORT_ROWS)
    float_bytes = 4 * sum(m.weight.numel() for n, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear) and n != "output")
    assert all(r.float_bytes == float_bytes for r in rows.values())
    n_weights = float_bytes // 4
    i8 = rows[("int8", "channel", 0, True, "auto")]
    # int8 codes one byte each + one fp32 scale per output channel
    n_channels = sum(m.weight.shape[0] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "output")
    assert i8.packed_bytes == n_weights + 4 * n_channels
    i4 = rows[("int4", "group", 32, True, "auto")]
    assert i4.packed_bytes < i8.packed_bytes * 0.6
    # precision ordering that any correct implementation shows on real weights
    assert i8.sqnr_db > 40
    assert i8.sqnr_db > rows[("hifloat8", "channel", 0, True, "auto")].sqnr_db > i4.sqnr_db
    assert i4.sqnr_db > rows[("int4", "channel", 0, True, "auto")].sqnr_db
    assert rows[("mxfp4_e2m1", "group", 32, True, "ascend")].sqnr_db > rows[("mxfp4_e2m1", "group", 32, True, "ocp")].sqnr_db
    text = render(list(rows.values()), "t")
    assert "mxfp4_e2m1" in text and "SQNR dB" in text

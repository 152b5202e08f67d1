import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

from lowbit.data import data_dir  # noqa: E402


@pytest.fixture
def shared_data():
    d = data_dir()
    if not (d / "models" / "stories260K.bin").exists():
        pytest.skip(f"shared data folder not found at {d} (set LOWBIT_DATA); real-model test skipped")
    return d

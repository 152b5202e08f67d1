"""Where the shared real models and data sets live."""
import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir():
    """``$LOWBIT_DATA`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("LOWBIT_DATA")
    return Path(env) if env else _REPO_ROOT.parent / "shared" / "data"


def data_file(*parts):
    """Path of a shared data file; FileNotFoundError (with the folder searched) if absent."""
    p = data_dir().joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(f"{p} not found (set LOWBIT_DATA to the folder holding models/, text/, images/)")
    return p

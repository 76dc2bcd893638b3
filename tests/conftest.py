import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture(scope='session')
def root() -> Path:
    "The repository's top folder."
    return ROOT

@pytest.fixture(scope='session')
def venv_bin() -> Path:
    "The folder holding this interpreter's console scripts (nbdev_export, jupyter-book, minillm)."
    return Path(sys.executable).parent

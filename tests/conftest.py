import os
import subprocess
import sys
from pathlib import Path

import pytest

import medzoo.registry

BIN = Path(sys.executable).parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    # two workers share the cores: one intra-op thread each, else each worker's torch oversubscribes them
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test gets its own store and a registry rebuilt from the installed plugins."""
    monkeypatch.setenv("MEDZOO_HOME", str(tmp_path / "medzoo_home"))
    monkeypatch.delenv("MEDZOO_LOAD_PLUGINS", raising=False)
    medzoo.registry.reset()
    yield
    medzoo.registry.reset()


def run_cli(*args, env=None, check=True, timeout=300):
    """Run the installed ``medzoo`` console script in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([str(BIN / "medzoo"), *args], capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"medzoo {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc

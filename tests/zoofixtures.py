"""Fixtures shared by the zoo tests: one small trained checkpoint per session, and a Hub test double."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hubserver import HubServer

TOKEN = "hf_zooTESTtoken0123456789secret"
ARCH = "timm:test_resnet"  # a stock timm model of 1.5 MB: publishing and loading stay fast


_TRAINED: list[Path] = []


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A real checkpoint from the trainer (one epoch on the synthetic lesion set at 32 px), trained once:
    each test module imports this fixture, and pytest keeps one instance per importing module."""
    import medzoo
    import medzoo.registry

    if _TRAINED:
        return _TRAINED[0]
    home = tmp_path_factory.mktemp("trained_home")
    old = os.environ.get("MEDZOO_HOME")
    os.environ["MEDZOO_HOME"] = str(home)
    try:
        medzoo.registry.reset()
        result = medzoo.train(ARCH, "scratch,phantom_lesion", overrides=["epochs=1", "image_size=32"], precision="fp32")
    finally:
        if old is None:
            os.environ.pop("MEDZOO_HOME", None)
        else:
            os.environ["MEDZOO_HOME"] = old
        medzoo.registry.reset()
    _TRAINED.append(result[-1].path)
    return result[-1].path


@pytest.fixture
def ckpt(trained) -> str:
    """The session checkpoint copied into this test's own store; returns its name."""
    from medzoo import store

    dest = store.checkpoints_dir() / trained.name
    shutil.copytree(trained, dest)
    return trained.name


def variant(name: str, new_name: str, seed: int) -> str:
    """Another valid checkpoint: the weights of ``name`` perturbed, its metadata updated to match."""
    from medzoo import models, store

    src = store.get_local(name)
    dest = store.checkpoints_dir() / new_name
    shutil.copytree(src.path, dest)
    g = torch.Generator().manual_seed(seed)
    state = {k: v + torch.randn(v.shape, generator=g).to(v.dtype) * 0.01 if v.is_floating_point() else v
             for k, v in models.load_safetensors(src.path / store.WEIGHTS).items()}
    store.save_tensors(dest / store.WEIGHTS, state)
    config = json.loads((dest / store.CONFIG).read_text())
    config["medzoo"]["name"] = new_name
    config["medzoo"]["weights_sha256"] = models.sha256_file(dest / store.WEIGHTS)
    (dest / store.CONFIG).write_text(json.dumps(config, indent=2))
    return new_name


def rewrite_config(name: str, fn) -> None:
    from medzoo import store

    path = store.checkpoints_dir() / name / store.CONFIG
    config = json.loads(path.read_text())
    fn(config)
    path.write_text(json.dumps(config, indent=2))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The Hub test double, with this process's huggingface_hub pointed at it.

    HF_ENDPOINT is read once when huggingface_hub is imported, so an in-process test patches the
    constants derived from it; the subprocess tests set HF_ENDPOINT itself instead (see hub_env).
    """
    from huggingface_hub import constants

    with HubServer(token=TOKEN) as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def hub_env(server: HubServer, tmp_path: Path, **extra) -> dict[str, str]:
    """Environment for a subprocess talking to ``server`` like a user's shell would."""
    return {"HF_ENDPOINT": server.url, "HF_TOKEN": TOKEN, "HF_HUB_CACHE": str(tmp_path / "hf_cache"),
            "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1", **extra}


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

"""The model card of a chain that starts from upstream weights names the upstream method, its licence and its
citation, folds that licence into the card's, and says so when the weights' terms forbid redistribution.

Rendering them is medzoo/cards.py's work (the typed lineage's SourceRecord)."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch
from upstream_server import serve

import medzoo
from medzoo import cards, store
from medzoo.models import create_model

ARCH = "timm:test_resnet"
CITATION = "Chen, Fan, Girshick, He. Improved Baselines with Momentum Contrastive Learning. arXiv:2003.04297, 2020"


@pytest.fixture
def upstream_chain(tmp_path, monkeypatch):
    """A one-stage chain from a catalogue entry (a MoCo-format checkpoint of a tiny ResNet) served by a mirror."""
    torch.manual_seed(0)
    body = {f"module.encoder_q.{k}": v for k, v in create_model(ARCH, num_classes=1000).state_dict().items()
            if not k.startswith("fc.")}
    buf = io.BytesIO()
    torch.save({"state_dict": body, "epoch": 800}, buf)
    data = buf.getvalue()

    def train(**entry_extra) -> store.Checkpoint:
        entry = {"method": "MoCo v2", "arch": ARCH, "keymap": "moco", "url": "https://example.org/tiny_moco.pth.tar",
                 "file": "tiny_moco.pth.tar", "sha256": hashlib.sha256(data).hexdigest(), "license": "cc-by-nc-4.0",
                 "license_url": "https://github.com/facebookresearch/moco/blob/main/LICENSE", "citation": CITATION,
                 **entry_extra}
        (tmp_path / "catalogue.json").write_text(json.dumps({"ssl:tiny_moco": entry}))
        monkeypatch.setenv("MEDZOO_UPSTREAM_CATALOGUE", str(tmp_path / "catalogue.json"))
        with serve() as server:
            server.files["/tiny_moco.pth.tar"] = data
            monkeypatch.setenv("MEDZOO_UPSTREAM_MIRROR", server.url)
            medzoo.registry.reset()
            results = medzoo.train(ARCH, ["ssl:tiny_moco", "phantom_agg"], precision="fp32",
                                   overrides=["epochs=1", "image_size=32"])
        return store.get_local(results[-1].name)

    return train


def test_card_names_the_upstream_method_licence_and_citation(upstream_chain):
    ckpt = upstream_chain()
    assert ckpt.lineage.source.method == "MoCo v2"  # recorded by the trainer on every branch
    card = cards.render(ckpt)
    assert "MoCo v2" in card
    assert CITATION in card
    assert "cc-by-nc-4.0" in card.lower()
    # the most restrictive licence of the chain: the upstream weights' CC BY-NC beats the generated data's CC0
    front = card.split("---")[1]
    assert "license: cc-by-nc-4.0" in front


def test_card_says_when_the_upstream_terms_forbid_redistribution(upstream_chain):
    ckpt = upstream_chain(redistributable=False)
    assert ckpt.lineage.source.redistributable is False
    assert "redistribut" in cards.render(ckpt).lower()

"""Model card metadata rules, and the package data that `medzoo card` and `medzoo.load` need in a wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

from huggingface_hub import ModelCard
from zoofixtures import ckpt, rewrite_config, trained  # noqa: F401 — pytest fixtures

from medzoo import cards, licenses, store

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_the_most_restrictive_and_a_hub_id():
    assert licenses.license_id("CC BY-NC 4.0") == "cc-by-nc-4.0"
    assert licenses.license_id("CC0-1.0 (generated)") == "cc0-1.0"
    assert licenses.license_id("research use only") == "other" and licenses.license_id("") == "unknown"
    # "license unspecified" is unknown (nobody recorded terms), not a custom licence
    assert licenses.license_id("unspecified (Kaggle upload; check before redistribution)") == "unknown"
    assert licenses.most_restrictive(["cc0-1.0", "cc-by-nc-4.0", "cc-by-4.0"]) == "cc-by-nc-4.0"
    assert licenses.most_restrictive(["cc-by-nc-4.0", "cc-by-nc-sa-4.0"]) == "cc-by-nc-sa-4.0"
    assert licenses.most_restrictive(["cc-by-4.0", "cc-by-nd-4.0"]) == "cc-by-nd-4.0"
    assert licenses.most_restrictive(["cc-by-nc-4.0", "cc-by-nd-4.0"]) == "cc-by-nc-nd-4.0"
    assert licenses.most_restrictive(["cc-by-4.0", "research use only"]) == "other"
    assert licenses.most_restrictive(["other", "unknown", "cc-by-nc-nd-4.0"]) == "unknown"  # unknown beats all
    assert licenses.most_restrictive([]) == "unknown"


def test_card_reflects_the_lineage(ckpt):
    def two_stages(config):
        lin = config["medzoo"]
        first = dict(lin["stages"][0], dataset="chest_public", license="cc-by-4.0", modality="XR")
        lin["stages"][-1].update(license="cc-by-nc-4.0", modality="MG")
        lin["stages"].insert(0, first)
        lin["source"] = {"name": "imagenet", "tag": "imagenet:a1_in1k", "sha256": "x"}

    rewrite_config(ckpt, two_stages)
    card = ModelCard(cards.render(store.get_local(ckpt), repo_id="lab/x"))
    meta = card.data.to_dict()
    assert meta["license"] == "cc-by-nc-4.0" and meta["base_model"] == "timm/test_resnet.a1_in1k"
    assert meta["datasets"] == ["chest_public", "phantom_lesion"] and {"XR", "MG"} <= set(meta["tags"])
    assert "| 1 | chest_public" in card.text and "| 2 | phantom_lesion" in card.text
    assert "**cc-by-nc-4.0**" in card.text and "ImageNet" in card.text
    assert "| 1 | chest_public (" in card.text and "| cc-by-4.0 |" in card.text  # every stage's licence


def test_wheel_ships_the_templates_and_the_catalogue(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    names = zipfile.ZipFile(next(tmp_path.glob("medzoo-*.whl"))).namelist()
    assert "medzoo/catalogue.json" in names and "medzoo_model_cards/classification.md" in names

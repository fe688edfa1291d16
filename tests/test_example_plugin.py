"""The worked example of docs/plugins.md, as shipped in docs/example_plugin/: built and installed with pip,
then trained through a real two-stage chain with its weight source, dataset and freeze policy, and its command run.
The page quotes the example's files whole, so it cannot drift from what is tested here."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXAMPLE = DOCS / "example_plugin"


def _quoted(page: str, name: str) -> str:
    """The code blocks of ``page`` marked ``<!-- example_plugin/NAME -->``, joined in order."""
    blocks = re.findall(rf"<!-- example_plugin/{re.escape(name)} -->\n```[a-z]*\n(.*?)```", page, re.S)
    return "\n\n\n".join(b.rstrip("\n") for b in blocks) + "\n"  # blocks split the file at its two-blank-line gaps


@pytest.mark.parametrize("name", ["pyproject.toml", "medzoo_acme.py"])
def test_the_docs_page_quotes_the_example_files_whole_and_in_order(name):
    page = (DOCS / "plugins.md").read_text()
    assert f"<!-- example_plugin/{name} -->" in page
    assert _quoted(page, name) == (EXAMPLE / name).read_text()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("example")
    src = shutil.copytree(EXAMPLE, root / "medzoo-acme")  # a build writes into the source folder: not into docs/
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(root / "site"), str(src)], check=True, capture_output=True)
    return root / "site"


@pytest.fixture(scope="module")
def dots(tmp_path_factory):
    """acme_dots as the plugin documents it: images/*.png and labels.csv (file,finding,patient), 2 images a patient."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("data") / "acme_dots"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["file,finding,patient"]
    for p in range(12):
        for view in range(2):
            finding = ("clear", "dots")[(p + view) % 2]
            img = (rng.random((32, 32)) * 80).astype(np.uint8)
            if finding == "dots":
                for y, x in rng.integers(2, 30, (6, 2)):
                    img[y - 1:y + 2, x - 1:x + 2] = 255
            Image.fromarray(img).save(folder / f"images/p{p:02d}_{view}.png")
            rows.append(f"images/p{p:02d}_{view}.png,{finding},P{p:02d}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def _env(site, tmp_path):
    return {"PYTHONPATH": str(site), "MEDZOO_HOME": str(tmp_path / "home"), "MEDZOO_DATA": str(tmp_path / "nodata")}


def test_the_example_is_discovered_with_every_hook_and_its_command_runs(site, dots, tmp_path):
    env = _env(site, tmp_path)
    listing = run_cli("plugins", env=env).stdout
    assert ("acme  (medzoo-acme 1.0.0)  register_archs, register_commands, register_datasets, "
            "register_freeze_policies, register_weight_sources") in listing
    for kind, name in (("archs", "acme_net"), ("datasets", "acme_dots"), ("policies", "acme_warm_stem[:<epochs>]"),
                       ("sources", "acme_ortho[:<seed>]")):
        rows = json.loads(run_cli("list", kind, "--json", env=env).stdout)
        assert {r["name"]: r["plugin"] for r in rows}.get(name) == "acme", (kind, name)
    out = run_cli("acme-dots", str(dots / "images/p00_1.png"), env=env).stdout
    assert re.fullmatch(rf"{re.escape(str(dots))}/images/p00_1.png: \d+ bright pixels\n", out)


def test_no_data_for_the_example_dataset_links_to_the_plugins_docs(site, tmp_path):
    proc = run_cli("data", "check", "acme_dots", env=_env(site, tmp_path), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("how to get it: https://acme.example/medzoo-acme#acme_dots")
    assert "github.com/medzoo" not in proc.stderr


def test_the_example_trains_through_its_weight_source_and_dataset_with_its_freeze_policy(site, dots, tmp_path,
                                                                                        monkeypatch):
    env = _env(site, tmp_path)
    proc = run_cli("train", "acme_net", "--stages", "acme_ortho:3,acme_dots", "--data-root", f"acme_dots={dots}",
                   "--set", "epochs=1", "--set", "image_size=32", env=env)
    assert "from 'acme_ortho:3'; freeze policy acme_warm_stem:1" in proc.stderr + proc.stdout
    ckpt = tmp_path / "home/checkpoints/acme_net.acme_ortho_3-acme_dots"
    config = json.loads((ckpt / "config.json").read_text())
    assert "acme_warm_stem:1" in json.dumps(config) and "acme_ortho:3" in json.dumps(config)

    # the dataset recipe's policy froze the stem for the one epoch: it still holds the source's weights
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("MEDZOO_HOME", env["MEDZOO_HOME"])
    import importlib

    importlib.invalidate_caches()
    import torch
    from safetensors.torch import load_file

    from medzoo.plugin import registry

    medzoo_acme = importlib.import_module("medzoo_acme")
    start = medzoo_acme.load_acme_ortho(arch=registry().resolve("archs", "acme_net"), arg="3").state_dict
    trained = load_file(ckpt / "model.safetensors")
    assert torch.equal(trained["stem.weight"], start["stem.weight"])
    assert not torch.equal(trained["stage1.0.weight"], start["stage1.0.weight"])


def test_the_examples_errors_are_one_line(site, dots, tmp_path):
    env = _env(site, tmp_path)
    wrong = run_cli("train", "resnet18", "--stages", "acme_ortho,acme_dots", "--data-root", f"acme_dots={dots}",
                    "--set", "epochs=1", "--set", "image_size=32", env=env, check=False)
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines()[-1] == "Error: acme_ortho gives weights for acme_net only, not 'resnet18'"
    bad_arg = run_cli("train", "acme_net", "--stages", "acme_ortho,acme_dots", "--data-root", f"acme_dots={dots}",
                      "--set", "freeze=acme_warm_stem:two", env=env, check=False)
    assert bad_arg.returncode == 1
    assert "acme_warm_stem:two: the argument must be a non-negative integer" in bad_arg.stderr

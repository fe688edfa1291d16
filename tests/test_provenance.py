"""Provenance (issue 12): the typed lineage and its schema, the one weights reader and its sha256 policy,
licences as data, path-free bounded names, and a publish that never destroys or leaks anything."""

import json
import os
import shutil
import struct
import tempfile

import datagen as g
import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard
from zoofixtures import ARCH, ckpt, hub, rewrite_config, trained  # noqa: F401 — pytest fixtures

import medzoo
from medzoo import cards, store, trainer
from medzoo import hub as mzhub
from medzoo.cli import cli, weights_rows
from medzoo.registry import MedzooError

REPO = "lab/prov"


def _one_line_error(res) -> str:
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- the weights reader -------------------------------------------------------------------------

def _save_with_header_byte(path, state, first: int = 0x80) -> None:
    """A valid safetensors file whose header length's low byte is ``first`` (padded through metadata)."""
    from safetensors.torch import save

    for pad in range(0, 4096):
        data = save({k: v.contiguous() for k, v in state.items()}, metadata={"pad": "x" * pad})
        if data[0] == first:
            store.atomic_write(path, data)
            return
    raise AssertionError("no padding gave the wanted header byte")


def test_safetensors_whose_header_length_starts_with_0x80_loads(ckpt, tmp_path):
    path = store.get_local(ckpt).path / store.WEIGHTS
    state = {k: v.clone() for k, v in medzoo.models.load_safetensors(path).items()}  # not views of the file
    _save_with_header_byte(path, state)
    assert path.read_bytes()[0] == 0x80 and struct.unpack("<Q", path.read_bytes()[:8])[0] % 256 == 128
    rewrite_config(ckpt, lambda c: c["medzoo"].update(weights_sha256=medzoo.models.sha256_file(path)))
    model = medzoo.load(ckpt)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())

    from medzoo_plugins.sources import load_file

    loose = tmp_path / "w.safetensors"
    shutil.copyfile(path, loose)
    weights = load_file(arch=None, arg=str(loose))  # the `file:` source
    assert weights.tag.startswith("file:") and weights.state_dict.keys() == state.keys()

    # a real pickle is still refused, whatever its name
    torch.save(state, tmp_path / "p.safetensors")
    with pytest.raises(MedzooError, match="pickle checkpoint"):
        load_file(arch=None, arg=str(tmp_path / "p.safetensors"))
    # so is a file whose header points outside it
    broken = bytearray(loose.read_bytes())
    broken[-4:] = b""
    (tmp_path / "cut.safetensors").write_bytes(bytes(broken))
    with pytest.raises(MedzooError, match="not a safetensors file .*data_offsets"):
        load_file(arch=None, arg=str(tmp_path / "cut.safetensors"))


def test_a_recorded_hash_mismatch_is_refused_by_every_reader(ckpt, tmp_path):
    from medzoo_plugins.sources import load_file

    rewrite_config(ckpt, lambda c: c["medzoo"].update(weights_sha256="0" * 64))
    local = store.get_local(ckpt)
    with pytest.raises(MedzooError, match="sha256 .*corrupted or tampered"):
        medzoo.load(ckpt)
    with pytest.raises(MedzooError, match="sha256 .*corrupted or tampered"):
        trainer.load_weights(local)  # a parent or a reused stage
    with pytest.raises(MedzooError, match="sha256 .*corrupted or tampered"):
        load_file(arch=None, arg=str(local.path / store.WEIGHTS))  # `file:` pointing into a checkpoint
    with pytest.raises(MedzooError, match="sha256 .*corrupted or tampered"):
        mzhub.dry_run(ckpt, tmp_path / "dry")
    assert not (tmp_path / "dry").exists()


# -- the typed lineage --------------------------------------------------------------------------

def test_schema_less_checkpoints_of_older_medzoo_still_load(ckpt):
    def old_layout(config):
        lin = config["medzoo"]
        lin.pop("schema")
        for s in lin["stages"]:
            for key in ("license_url", "data", "overlap"):
                s.pop(key, None)
            s["license"] = "CC0-1.0 (generated)"  # schema 1 recorded the licence as free text

    rewrite_config(ckpt, old_layout)
    lin = store.get_local(ckpt).lineage
    assert lin.stages[-1].license == "cc0-1.0" and lin.schema == 2
    assert medzoo.load(ckpt).medzoo_lineage.stages[-1].dataset == "phantom_lesion"
    assert "license: cc0-1.0" in cards.render(store.get_local(ckpt))


@pytest.mark.parametrize("junk, message", [
    (lambda c: c.update(medzoo="junk"), "not an object"),
    (lambda c: c["medzoo"].update(schema=99), "newer medzoo .*schema 99.*upgrade"),
    (lambda c: c.update(num_classes=-1), "num_classes is -1"),
    (lambda c: c.update(num_classes=1e9, label_names=None), "num_classes is 1000000000"),
    (lambda c: c["medzoo"].pop("arch"), "arch is None"),
    (lambda c: c["medzoo"].update(stages="x"), "stages is 'x'"),
    (lambda c: c["medzoo"].update(image_size=10**7), "image_size"),
])
def test_a_junk_config_is_one_line_before_anything_is_built(ckpt, junk, message):
    rewrite_config(ckpt, junk)
    with pytest.raises(MedzooError, match=message):
        medzoo.load(ckpt)
    line = _one_line_error(CliRunner().invoke(cli, ["card", ckpt]))
    assert ckpt in line


def test_one_broken_checkpoint_does_not_break_list_weights(ckpt):
    broken = store.checkpoints_dir() / "broken-one"
    broken.mkdir()
    (broken / store.CONFIG).write_text('{"medzoo": "junk"}')
    res = CliRunner().invoke(cli, ["list", "weights"])
    assert res.exit_code == 0, res.output
    assert ckpt in res.output and "broken-one" in res.output and "BROKEN" in res.output
    rows = {r["name"]: r for r in weights_rows()}
    assert "not an object" in rows["broken-one"]["broken"] and "broken" not in rows[ckpt]


def test_variants_of_one_chain_show_seed_and_differing_recipe_keys(ckpt):
    twin = f"{ckpt}~abcdef12"
    shutil.copytree(store.checkpoints_dir() / ckpt, store.checkpoints_dir() / twin)

    def other_seed(config):
        config["medzoo"]["name"] = twin
        stage = config["medzoo"]["stages"][-1]
        stage["seed"] = stage["recipe"]["seed"] = 3
        stage["recipe"]["lr"] = 0.01

    rewrite_config(twin, other_seed)
    rows = {r["name"]: r for r in weights_rows()}
    base_lr = store.get_local(ckpt).lineage.stages[-1].recipe["lr"]
    assert rows[ckpt]["variant"] == f"seed=0 lr={base_lr}" and rows[twin]["variant"] == "seed=3 lr=0.01"
    assert "seed=3 lr=0.01" in CliRunner().invoke(cli, ["list", "weights"]).output


# -- names ----------------------------------------------------------------------------------------

def test_store_names_never_leave_the_store(ckpt, tmp_path, monkeypatch):
    outside = store.home() / "x"  # a checkpoint-shaped folder beside checkpoints/, not in it
    shutil.copytree(store.checkpoints_dir() / ckpt, outside)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert store.find_local("../x") is None and store.find_local(str(outside)) is None
    with pytest.raises(MedzooError, match="no model '../x'"):
        medzoo.load("../x")
    for name in ("../x", str(outside)):
        with pytest.raises(MedzooError, match="not a checkpoint name"):
            mzhub.dry_run(name, tmp_path / "dry")
        _one_line_error(CliRunner().invoke(cli, ["card", name]))
    assert not (tmp_path / "dry").exists()
    assert medzoo.load(str(outside)).medzoo_origin == f"'{outside}'"  # an explicit existing path is a path


def test_a_300_character_data_path_trains_with_a_bounded_path_free_name(tmp_path):
    deep = tmp_path
    while len(str(deep)) < 300:
        deep = deep / "hospital_site_department_study_2026"
    for cls in ("a", "b"):
        for i in range(6):
            g.write_png(deep / "scans" / cls / f"{i}.png", g.pattern(i + (20 if cls == "b" else 0), (40, 40)))
    data = deep / "scans"
    assert len(str(data)) >= 300
    result = medzoo.train("timm:test_resnet", ["scratch", f"imagefolder:{data}"],
                          overrides=["epochs=1", "image_size=32", "batch_size=4"], precision="fp32")[-1]
    assert len(result.name) <= store.MAX_NAME and "imagefolder_scans_" in result.name
    assert "hospital" not in result.name
    config = (result.path / store.CONFIG).read_text()
    card = cards.render(store.get_local(result.name), metrics={})
    for text in (config, card):
        assert str(tmp_path) not in text and "hospital_site" not in text
    stage = store.get_local(result.name).lineage.stages[-1]
    assert stage.dataset == "imagefolder:scans" and stage.data["records"] == 12 and stage.license == "unknown"
    assert ModelCard(card).data.to_dict()["datasets"] == ["imagefolder:scans"]


# -- licences -------------------------------------------------------------------------------------

def test_dermamnist_card_says_cc_by_nc(tmp_path):
    g.make_medmnist(tmp_path / "mnist", "dermamnist", 28, n=(14, 6, 4), channels=3, labels=7)
    result = medzoo.train("timm:test_resnet", ["scratch", "medmnist:dermamnist"], data_roots={
        "medmnist:dermamnist": str(tmp_path / "mnist")}, overrides=[
        "epochs=1", "image_size=32", "batch_size=4"], precision="fp32")[-1]
    ckpt_ = store.get_local(result.name)
    stage = ckpt_.lineage.stages[-1]
    assert stage.license == "cc-by-nc-4.0" and stage.license_url == "https://creativecommons.org/licenses/by-nc/4.0/"
    card = ModelCard(cards.render(ckpt_))
    assert card.data.to_dict()["license"] == "cc-by-nc-4.0" and "| cc-by-nc-4.0 |" in card.text
    assert json.loads((result.path / store.CONFIG).read_text())["pretrained_cfg"]["license"] == "cc-by-nc-4.0"


def test_an_unknown_licence_makes_publish_refuse_unless_named(ckpt, tmp_path):
    rewrite_config(ckpt, lambda c: c["medzoo"]["stages"][-1].update(license="unknown"))
    with pytest.raises(MedzooError, match="licence of phantom_lesion is unknown.*--license"):
        mzhub.dry_run(ckpt, tmp_path / "dry")
    assert not (tmp_path / "dry").exists()
    line = _one_line_error(CliRunner().invoke(cli, ["publish", ckpt, "--repo-id", REPO, "--dry-run",
                                                    "--out", str(tmp_path / "dry")]))
    assert "--license" in line
    with pytest.raises(MedzooError, match="not a Hugging Face licence id"):
        mzhub.dry_run(ckpt, tmp_path / "dry", license="my licence")
    result = mzhub.dry_run(ckpt, tmp_path / "dry", license="cc-by-4.0")
    card = ModelCard((result.folder / "README.md").read_text())
    assert card.data.to_dict()["license"] == "cc-by-4.0" and "as named by the publisher" in card.text
    assert json.loads((result.folder / "config.json").read_text())["pretrained_cfg"]["license"] == "cc-by-4.0"


def test_non_redistributable_upstream_weights_are_stated_and_need_a_flag(ckpt, tmp_path):
    def upstream(config):
        config["medzoo"]["source"].update(name="ssl:mocov2", method="MoCo v2", license="cc-by-nc-4.0",
                                          citation="He et al., CVPR 2020.", redistributable=False)

    rewrite_config(ckpt, upstream)
    text = cards.render(store.get_local(ckpt))
    assert "MoCo v2" in text and "He et al., CVPR 2020." in text and "forbid redistributing" in text
    assert "license: cc-by-nc-4.0" in text  # the source weights' licence counts too
    with pytest.raises(MedzooError, match="forbid redistributing.*--allow-non-redistributable"):
        mzhub.dry_run(ckpt, tmp_path / "dry")
    assert mzhub.dry_run(ckpt, tmp_path / "dry", allow_non_redistributable=True).folder.is_dir()


# -- publish safety -------------------------------------------------------------------------------

def test_a_dry_run_never_touches_a_users_folder(ckpt, tmp_path, monkeypatch):
    user = tmp_path / "my_model"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}')
    (user / "model.safetensors").write_bytes(b"my weights")
    (user / "README.md").write_text("my notes")
    before = _snapshot(user)
    line = _one_line_error(CliRunner().invoke(cli, ["publish", ckpt, "--repo-id", REPO, "--dry-run",
                                                    "--out", str(user)]))
    assert "did not write" in line and _snapshot(user) == before

    monkeypatch.chdir(user)
    line = _one_line_error(CliRunner().invoke(cli, ["publish", ckpt, "--repo-id", REPO, "--dry-run", "--out", "."]))
    assert "current folder" in line and _snapshot(user) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]

    fresh = tmp_path / "fresh"
    fresh.mkdir()  # an empty folder is fine, and so is rerunning into the folder a dry run made
    assert mzhub.dry_run(ckpt, fresh).folder == fresh and (fresh / mzhub.DRY_RUN_MARKER).is_file()
    mzhub.dry_run(ckpt, fresh)
    assert sorted(p.name for p in fresh.iterdir()) == [".medzoo-dry-run", "README.md", "config.json",
                                                       "model.safetensors"]


@pytest.mark.parametrize("repo_id", ['lab/x") ; import os; os.system("id") #', "../../etc", "a/b/c", "noslash"])
def test_a_bad_repo_id_is_refused_before_anything_is_written(ckpt, tmp_path, repo_id):
    with pytest.raises(MedzooError, match="--repo-id"):
        mzhub.dry_run(ckpt, tmp_path / "dry", repo_id=repo_id)
    assert not (tmp_path / "dry").exists()
    line = _one_line_error(CliRunner().invoke(cli, ["card", ckpt, "--repo-id", repo_id]))
    assert "--repo-id" in line


def test_a_connection_lost_mid_upload_is_one_line_and_leaves_nothing(ckpt, hub, tmp_path, monkeypatch):
    import importlib

    from huggingface_hub import HfApi

    http = importlib.import_module("httpx2" if importlib.util.find_spec("httpx2") else "httpx")  # the Hub client's

    def lost(self, **kwargs):
        assert os.listdir(kwargs["folder_path"])  # the upload had its files when the line dropped
        raise http.ConnectError("connection reset by peer")

    monkeypatch.setattr(HfApi, "upload_folder", lost)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    before = _snapshot(store.get_local(ckpt).path)
    line = _one_line_error(CliRunner().invoke(cli, ["publish", ckpt, "--repo-id", REPO]))
    assert "ConnectError" in line and REPO in line and "local checkpoint is unchanged" in line
    assert list(scratch.iterdir()) == []
    assert _snapshot(store.get_local(ckpt).path) == before


def test_a_medagg_build_takes_the_most_restrictive_licence_of_its_sources(tmp_path, monkeypatch):
    from medzoo.data import open_dataset
    from medzoo_plugins.medagg_build import BuildConfig, build_medagg

    g.make_medmnist(tmp_path / "mm", "breastmnist", 28)
    g.make_medmnist(tmp_path / "mm", "dermamnist", 28, channels=3, labels=3, seed=7)
    monkeypatch.setenv("MEDZOO_DATA_MEDMNIST", str(tmp_path / "mm"))
    sources = [("medmnist:breastmnist", None), ("medmnist:dermamnist", None)]
    build_medagg(BuildConfig(sources, tmp_path / "out", size=28, label="modality", hash_distance=-1))
    info = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert info["licenses"] == {"breastmnist": "cc-by-4.0", "dermamnist": "cc-by-nc-4.0"}
    assert open_dataset("medagg", tmp_path / "out").meta["license"] == "cc-by-nc-4.0"
    info.pop("license")  # a build from before licences were recorded: unknown, never a guess
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(info))
    assert open_dataset("medagg", tmp_path / "out").meta["license"] == "unknown"


def test_a_chain_from_a_local_weights_file_names_the_file_never_its_path(ckpt, tmp_path):
    secret = tmp_path / "lab_secret_share" / "w.safetensors"
    secret.parent.mkdir()
    shutil.copy(store.get_local(ckpt).path / store.WEIGHTS, secret)
    result = medzoo.train(ARCH, [f"file:{secret}", "phantom_lesion"], overrides=["epochs=1", "image_size=32"],
                          precision="fp32")[-1]
    local = store.get_local(result.name)
    assert local.lineage.source.name == "file:w.safetensors" and "lab_secret" not in result.name
    card = cards.render(local, metrics={})
    for text in ((result.path / store.CONFIG).read_text(), card):
        assert "lab_secret" not in text and str(tmp_path) not in text
    assert "file:w.safetensors → phantom_lesion" in card
    row = next(r for r in weights_rows() if r["name"] == result.name)
    assert row["chain"] == "file:w.safetensors > phantom_lesion"
    # a bare file says nothing of its terms: publishing needs --license, then ships no path
    assert local.lineage.source.license == "unknown"
    with pytest.raises(MedzooError, match="licence of its source weights is unknown.*--license"):
        mzhub.dry_run(result.name, tmp_path / "dry")
    shipped = mzhub.dry_run(result.name, tmp_path / "dry", license="cc-by-4.0").folder
    for f in ("config.json", "README.md"):
        assert "lab_secret" not in (shipped / f).read_text()
    # a checkpoint written before file: sources were recorded by name still shows no path on its card
    rewrite_config(result.name, lambda c: c["medzoo"]["source"].update(name=f"file:{secret}"))
    assert "lab_secret" not in cards.render(store.get_local(result.name), metrics={})


def test_hub_sources_keep_their_org_and_url_sources_are_named_by_hash():
    from medzoo.lineage import Lineage, SourceRecord, StageRecord

    lin = Lineage(arch="resnet18", source=SourceRecord(name="hf-hub:my-lab/swin_t-medagg@abc123"),
                  stages=[StageRecord(dataset="imagefolder:/data/site_a/scans", fingerprint="f" * 64)])
    assert lin.public_chain() == ["hf-hub:my-lab/swin_t-medagg@abc123", "imagefolder:scans"]
    url = "url:https://dl.fbaipublicfiles.com/moco/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar"
    name = "resnet50" + store.source_suffix(url, "url:319d8810abcd")
    assert name == "resnet50.url_319d8810abcd"
    assert name == "resnet50" + store.source_suffix(url + "#sha256=" + "3" * 64, "url:319d8810abcd")

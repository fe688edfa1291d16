"""medzoo.load / transforms_for from the local store, directories, files, the catalogue, and a registry
arch of another task; integrity (sha256) and pickle refusal."""

import json
import shutil

import numpy as np
import pytest
import torch
from zoofixtures import ckpt, rewrite_config, same_state, state_of, trained  # noqa: F401 — pytest fixtures

import medzoo
from medzoo import MedzooError, models, store, zoo
from medzoo import data as mzdata
from medzoo.registry import ArchSpec, registry


def _local_state(name):
    return models.load_safetensors(store.get_local(name).path / store.WEIGHTS)


def test_load_local_name_is_the_checkpoint_in_eval_mode(ckpt):
    model = medzoo.load(ckpt)
    assert not model.training
    assert same_state(state_of(model), _local_state(ckpt))
    lin = store.get_local(ckpt).lineage
    assert model.medzoo_lineage == lin and model.medzoo_origin == f"local checkpoint '{ckpt}'"
    assert model.pretrained_cfg["input_size"] == [3, 32, 32]
    assert model.pretrained_cfg["weights_sha256"] == lin.weights_sha256
    assert model.pretrained_cfg["tag"] == f"medzoo.{ckpt}"


def test_load_directory_and_safetensors_file(ckpt, tmp_path):
    copy = tmp_path / "exported"
    shutil.copytree(store.get_local(ckpt).path, copy)
    for target in (copy, copy / store.WEIGHTS, str(copy)):
        model = medzoo.load(target)
        assert same_state(state_of(model), _local_state(ckpt))
    for target in (copy, ckpt):
        with pytest.raises(MedzooError, match="has no revisions"):
            medzoo.load(target, revision="main")


def test_new_head_one_channel_and_features_only(ckpt):
    local = medzoo.load(ckpt)
    sd = state_of(local)
    five = medzoo.load(ckpt, num_classes=5)
    assert five.get_classifier().out_features == 5
    backbone = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    assert all(torch.equal(state_of(five)[k], v) for k, v in backbone.items())
    assert five.pretrained_cfg["num_classes"] == 5

    grey = medzoo.load(ckpt, in_chans=1)
    first = local.pretrained_cfg["first_conv"] + ".weight"
    assert torch.allclose(state_of(grey)[first], sd[first].sum(1, keepdim=True))  # timm's RGB→grey rule
    assert grey(torch.randn(2, 1, 32, 32)).shape == (2, 2)
    assert medzoo.transforms_for(grey)(np.zeros((40, 50), np.uint8)).shape == (1, 32, 32)

    feats = medzoo.load(ckpt, features_only=True)
    x = torch.randn(2, 3, 32, 32)
    outs = feats(x)
    assert [o.shape[1] for o in outs] == feats.feature_info.channels()
    with torch.no_grad():
        assert torch.allclose(outs[-1], local.forward_features(x), atol=1e-6)
    assert medzoo.load(ckpt, features_only=True, in_chans=1)(torch.randn(1, 1, 32, 32))[-1].shape == outs[-1][:1].shape


def test_pretrained_false_builds_the_architecture_only(ckpt):
    model = medzoo.load(ckpt, pretrained=False)
    assert state_of(model).keys() == _local_state(ckpt).keys()
    assert not same_state(state_of(model), _local_state(ckpt))


def test_transforms_match_the_trainers_preprocessing(ckpt):
    model = medzoo.load(ckpt)
    image = (np.random.default_rng(0).random((48, 40)) * 255).astype(np.uint8)
    recipe = store.get_local(ckpt).lineage.stages[-1].recipe
    fresh = medzoo.create_model(model.medzoo_lineage.arch, num_classes=2).pretrained_cfg
    trainer_cfg = mzdata.TransformConfig(image_size=recipe["image_size"], augment=recipe["augment"],  # as the
                                         mean=tuple(fresh["mean"]), std=tuple(fresh["std"]),  # trainer's
                                         in_chans=recipe["in_chans"])  # StageTrainer._transform_cfg
    expected = mzdata.build_transform(trainer_cfg, train=False)(mzdata.to_tensor(image, recipe["in_chans"]))
    transform = medzoo.transforms_for(model)
    assert torch.equal(transform(image), expected)
    from PIL import Image

    assert torch.equal(transform(Image.fromarray(image)), expected)
    assert torch.allclose(transform(mzdata.to_tensor(image, 3)), expected)


def test_tampered_weights_fail_the_hash_check(ckpt, tmp_path):
    path = store.get_local(ckpt).path / store.WEIGHTS
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(MedzooError, match="sha256.*tampered"):
        medzoo.load(ckpt)


def test_pickles_are_refused_even_with_a_matching_hash(ckpt, tmp_path):
    d = tmp_path / "pickled"
    shutil.copytree(store.get_local(ckpt).path, d)
    (d / store.WEIGHTS).unlink()
    torch.save(_local_state(ckpt), d / "pytorch_model.bin")
    with pytest.raises(MedzooError, match="pickled weights .*never loads"):
        medzoo.load(d)
    with pytest.raises(MedzooError, match=r"pickle checkpoint.*`medzoo weights convert PATH --to x\.safetensors`"):
        medzoo.load(d / "pytorch_model.bin")  # the fix offered must not unpickle either (no torch.load)
    # a pickle renamed to model.safetensors, with its hash written into the config, is still refused
    (d / "pytorch_model.bin").rename(d / store.WEIGHTS)
    config = json.loads((d / store.CONFIG).read_text())
    config["medzoo"]["weights_sha256"] = models.sha256_file(d / store.WEIGHTS)
    (d / store.CONFIG).write_text(json.dumps(config))
    with pytest.raises(MedzooError, match="pickle"):
        medzoo.load(d)


def test_unverifiable_and_unknown_inputs_are_one_line_errors(ckpt, tmp_path, capsys):
    rewrite_config(ckpt, lambda c: c["medzoo"].pop("weights_sha256"))
    medzoo.load(ckpt)  # one policy for every reader: no recorded hash loads, and says so plainly
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Warning:")]
    assert len(warning) == 1 and "cannot be verified" in warning[0]
    with pytest.raises(MedzooError, match=r"did you mean '" + ckpt.replace(".", r"\.")):
        medzoo.load(ckpt[:-2])
    with pytest.raises(MedzooError, match="ORG/REPO"):
        medzoo.load("hf-hub:no-slash")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(store.get_local(ckpt).path / store.WEIGHTS, lone / store.WEIGHTS)
    with pytest.raises(MedzooError, match="no config.json") as err:
        medzoo.load(lone / store.WEIGHTS)
    assert "\n" not in str(err.value)


def test_catalogue_lookup_pins_and_validates(ckpt, tmp_path, monkeypatch):
    packaged = zoo.catalogue()  # the real shipped file parses
    assert all("/" in e["repo_id"] for e in packaged.values())
    cat = tmp_path / "cat.json"
    cat.write_text(json.dumps({"models": {"lesion-demo": {
        "repo_id": "lab/lesion", "revision": "a" * 40, "arch": "timm:test_resnet", "chain": "scratch > phantom_lesion",
        "task": "classification", "metric": "auc 0.9000", "weights_sha256": "0" * 64}}}))
    monkeypatch.setenv("MEDZOO_CATALOGUE", str(cat))
    assert zoo.catalogue()["lesion-demo"]["repo_id"] == "lab/lesion"
    from medzoo.cli import weights_rows

    rows = {r["name"]: r for r in weights_rows()}
    assert rows["lesion-demo"]["where"] == f"hf-hub:lab/lesion@{'a' * 40}"
    assert rows["lesion-demo"]["best"] == "auc 0.9000"
    assert rows[ckpt]["where"].endswith(ckpt)
    # the name resolves to the catalogue's repo and revision (offline here: the error names both)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(MedzooError,
                       match=f"hf-hub:lab/lesion@{'a' * 40}: config.json is not in the Hugging Face cache"):
        medzoo.load("lesion-demo")
    cat.write_text("{not json")
    with pytest.raises(MedzooError, match="cat.json' is not valid JSON"):
        medzoo.load("lesion-demo")
    cat.write_text(json.dumps({"models": {"x": {"repo": "lab/x"}}}))
    with pytest.raises(MedzooError, match="entry 'x' needs \"repo_id\""):
        zoo.catalogue()


class TinySeg(torch.nn.Module):
    """A stand-in segmentation arch: load must build any task's arch through the registry."""

    def __init__(self, num_classes, in_chans):
        super().__init__()
        self.encoder = torch.nn.Conv2d(in_chans, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        return self.head(self.encoder(x).relu())


def test_segmentation_arch_loads_through_the_registry(tmp_path):
    registry().add("archs", ArchSpec(name="tiny_seg", task="segmentation", build=lambda *, num_classes, in_chans=3,
                                     **kw: TinySeg(num_classes, in_chans)), plugin="test")
    d = tmp_path / "seg"
    d.mkdir()
    state = TinySeg(3, 1).state_dict()
    store.save_tensors(d / store.WEIGHTS, state)
    lineage = {"name": "tiny_seg-x", "arch": "tiny_seg", "task": "segmentation", "in_chans": 1, "image_size": 16,
               "weights_sha256": models.sha256_file(d / store.WEIGHTS), "stages": []}
    (d / store.CONFIG).write_text(json.dumps({"num_classes": 3, "label_names": ["bg", "a", "b"], "medzoo": lineage,
                                              "pretrained_cfg": {"mean": [0.5], "std": [0.25]}}))
    model = medzoo.load(d)
    assert same_state(state_of(model), state) and model.medzoo_lineage.task == "segmentation"
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 3, 16, 16)
    assert medzoo.transforms_for(model)(np.zeros((20, 20), np.float32)).shape == (1, 16, 16)
    with pytest.raises(MedzooError, match="features_only needs a stock timm"):
        medzoo.load(d, features_only=True)

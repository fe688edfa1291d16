"""Publishing segmentation checkpoints in the layout their own library loads: smp's save_pretrained format
for UNets (plain ``smp.from_pretrained`` loads them), medzoo's files plus a MONAI recipe for Swin UNETR."""

import json
import re

import huggingface_hub
import pytest
import segmentation_models_pytorch as smp
import torch
from datagen import make_bcss
from huggingface_hub import ModelCard
from zoofixtures import TOKEN, hub, same_state, state_of  # noqa: F401 — pytest fixtures

import medzoo
from medzoo import MedzooError, models, store
from medzoo import hub as mzhub

REPO = "lab/lesion-unet"
FAST = dict(overrides=["epochs=1", "image_size=32"], precision="fp32")


def _local_state(name):
    return models.load_safetensors(store.get_local(name).path / store.WEIGHTS)


def test_unet_publishes_in_smp_layout_and_loads_with_smp_and_medzoo(hub):
    name = medzoo.train("unet_resnet18", "scratch,phantom_lesion_seg", **FAST)[-1].name
    result = mzhub.publish(name, REPO)
    assert result.layout == "smp"
    files = hub.repos[REPO].commits[result.commit].files
    assert sorted(files) == [".gitattributes", "README.md", "config.json", "medzoo.json", "model.safetensors"]
    smp_config = json.loads(files["config.json"])
    assert smp_config["_model_class"] == "Unet" and smp_config["encoder_name"] == "tu-resnet18"
    assert smp_config["classes"] == 2 and "medzoo" not in smp_config  # smp passes unknown keys on to timm
    assert json.loads(files["medzoo.json"]) == store.get_local(name).full_config()
    assert files["model.safetensors"] == (store.get_local(name).path / store.WEIGHTS).read_bytes()

    local = _local_state(name)
    plain = smp.from_pretrained(REPO).eval()  # segmentation-models-pytorch alone, from the Hub
    assert isinstance(plain, smp.Unet) and same_state(state_of(plain), local)
    model = medzoo.load(f"hf-hub:{REPO}")
    assert same_state(state_of(model), local) and model.medzoo_lineage == store.get_local(name).lineage
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))

    card = ModelCard(files["README.md"].decode())
    meta = card.data.to_dict()
    assert meta["library_name"] == "segmentation-models-pytorch" and meta["pipeline_tag"] == "image-segmentation"
    assert {"dice", "iou", "dice_lesion"} <= {r.metric_type for r in card.data.eval_results}
    assert f'smp.from_pretrained("{REPO}")' in card.text and "`medzoo.json`" in card.text
    assert "U-Net" in card.text and "not for clinical use" in card.text.lower()

    # the published weights start another chain; the segmentation head comes along (same classes)
    again = medzoo.train("unet_resnet18", f"hf-hub:{REPO},phantom_lesion_seg", **FAST)
    lineage = store.get_local(again[-1].name).lineage
    assert lineage.source.name == f"hf-hub:{REPO}"
    assert lineage.stages[-1].parent_sha256 == model.pretrained_cfg["weights_sha256"]


def test_a_plain_smp_repo_is_not_taken_for_a_medzoo_model(hub, tmp_path):
    net = smp.Unet(encoder_name="tu-resnet18", encoder_weights=None, classes=2)
    net.save_pretrained(tmp_path / "plain")
    huggingface_hub.HfApi().create_repo("lab/plain-unet", exist_ok=True)
    huggingface_hub.HfApi().upload_folder(repo_id="lab/plain-unet", folder_path=tmp_path / "plain")
    with pytest.raises(MedzooError, match=r"not a medzoo model .*no medzoo.json\); it looks like a "
                                          r"segmentation_models_pytorch model: load it with .*"
                                          r"smp.from_pretrained\(\"lab/plain-unet\"\)"):
        medzoo.load("hf-hub:lab/plain-unet")


def _bcss(tmp_path, monkeypatch, slides):
    make_bcss(tmp_path / "bcss", slides=tuple(f"TCGA-A{i}-A0SK" for i in range(slides)))
    monkeypatch.setenv("MEDZOO_DATA_BCSS", str(tmp_path / "bcss"))


def test_swin_unetr_publishes_medzoo_files_with_a_monai_recipe(tmp_path, monkeypatch):
    _bcss(tmp_path, monkeypatch, slides=8)
    name = medzoo.train("swin_unetr", "scratch,bcss:64", overrides=["epochs=1", "image_size=64", "batch_size=4"],
                        precision="fp32")[-1].name
    result = mzhub.dry_run(name, tmp_path / "out", repo_id="lab/bcss-swin-unetr")
    assert result.layout == "medzoo" and result.files == ["README.md", "config.json", "model.safetensors"]
    local = _local_state(name)
    assert same_state(state_of(medzoo.load(tmp_path / "out")), local)

    # the card's plain-MONAI recipe, run as written (the Hub download answered by the dry run's file)
    card = ModelCard((tmp_path / "out" / "README.md").read_text())
    assert "library_name" not in card.data.to_dict() and "monai" in card.data.to_dict()["tags"]
    snippet = re.search(r"With plain monai.*?```python\n(.*?)```", card.text, re.S)[1]
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, filename: str(tmp_path / "out" / filename)
                        if repo == "lab/bcss-swin-unetr" else None)
    scope = {}
    exec(snippet, scope)
    assert same_state(state_of(scope["model"]), local)
    assert "Swin UNETR" in card.text and "MONAI" in card.text


def test_a_split_too_small_to_validate_on_is_refused(tmp_path, monkeypatch):
    _bcss(tmp_path, monkeypatch, slides=4)  # 3 training patients: 15% of them rounds to none
    with pytest.raises(MedzooError, match=r"'bcss:64' has no validation images: .* from 3 patient\(s\)"):
        medzoo.train("unet_resnet18", "scratch,bcss:64", overrides=["epochs=1", "image_size=64"], precision="fp32")
    assert not list(store.checkpoints_dir().glob("*bcss*"))

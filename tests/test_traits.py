"""Architecture traits come from the specs their plugins register: the card's "how to load", the Hub layout,
the rebuild on load, block groups, fixed input size and channels_last (the core checks no names)."""

import json

import pytest
import timm
import torch
from huggingface_hub import ModelCard

import medzoo
from medzoo import cards, models, speed, store
from medzoo import hub as mzhub
from medzoo.plugin import ArchSpec, HubLayout
from medzoo.registry import registry

FAST = dict(overrides=["epochs=1", "image_size=32"], precision="fp32")


class TinyNet(torch.nn.Module):
    """A classifier no library but this test knows (a third-party plugin's own architecture)."""

    def __init__(self, num_classes: int, in_chans: int = 3):
        super().__init__()
        self.stem = torch.nn.Conv2d(in_chans, 4, 3, padding=1)
        self.body = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.body(torch.relu(self.stem(x))).mean((2, 3)))


def _register_tiny(**traits) -> None:
    registry().add("archs", ArchSpec(name="tiny_net", build=lambda *, num_classes, in_chans=3, **_: TinyNet(
        num_classes, in_chans), input_size=(3, 32, 32), citation="Doe et al., TinyNet, 2031.", **traits), plugin="acme")


def test_a_non_timm_classifier_card_does_not_send_users_to_timm(tmp_path):
    _register_tiny()
    name = medzoo.train("tiny_net", "scratch,phantom_lesion", **FAST)[-1].name
    ckpt = store.get_local(name)
    card = ModelCard(cards.render(ckpt, repo_id="lab/tiny"))
    assert "timm.create_model" not in card.text and "With plain" not in card.text
    assert 'medzoo.load("hf-hub:lab/tiny")' in card.text
    assert "library_name" not in card.data.to_dict() and "timm" not in card.data.to_dict()["tags"]
    assert "Doe et al., TinyNet, 2031." in card.text  # the spec's citation
    assert "pytorch-image-models" not in card.text  # timm is cited by timm's layout, not on every card
    result = mzhub.dry_run(name, tmp_path / "out", repo_id="lab/tiny")
    assert result.layout == "medzoo" and result.plain_code == ""
    assert isinstance(medzoo.load(tmp_path / "out"), TinyNet)


def test_the_card_shows_the_loading_code_of_the_archs_own_layout(tmp_path):
    layout = HubLayout(name="acme", library="acmelib", hf_library="acmelib",
                       load_code=lambda *, repo_id, num_classes, **_: f"import acmelib\nm = acmelib.load({repo_id!r}, "
                                                                        f"classes={num_classes})")
    _register_tiny(hub_layout=layout)
    name = medzoo.train("tiny_net", "scratch,phantom_lesion", **FAST)[-1].name
    card = ModelCard(cards.render(store.get_local(name), repo_id="lab/tiny"))
    assert "With plain acmelib (no medzoo needed):" in card.text
    assert "import acmelib\nm = acmelib.load('lab/tiny', classes=2)" in card.text
    assert card.data.to_dict()["library_name"] == "acmelib" and "timm.create_model" not in card.text


def test_load_rebuilds_through_the_archs_rebuild_trait():
    seen = []

    def rebuild(*, config, lineage, num_classes, in_chans):
        seen.append((lineage.arch, config["num_classes"], num_classes, in_chans))
        return TinyNet(num_classes, in_chans)

    _register_tiny(rebuild=rebuild)
    name = medzoo.train("tiny_net", "scratch,phantom_lesion", **FAST)[-1].name
    model = medzoo.load(name)
    assert seen == [("tiny_net", 2, 2, 3)] and isinstance(model, TinyNet)
    stored = store.get_local(name)
    assert all(torch.equal(v, models.load_safetensors(stored.path / store.WEIGHTS)[k])
               for k, v in model.state_dict().items())


def test_group_prefixes_group_by_longest_prefix_and_reach_freeze_policies():
    net = TinyNet(2)
    assert models.block_groups(net, (("stem.",), ("",), ("head.",))) == [
        ["stem.weight", "stem.bias"], ["body.weight", "body.bias"], ["head.weight", "head.bias"]]
    unet = registry().resolve("archs", "unet_resnet18")
    groups = models.block_groups(models.build(unet, num_classes=2, img_size=64), unet.spec.group_prefixes)
    assert [g[0].split(".")[0] for g in groups] == ["encoder", "decoder", "segmentation_head"]
    top = registry().resolve("policies", "top:1").spec.apply
    built = models.build(unet, num_classes=2, img_size=64)
    top(built, arg="1", groups=groups)  # the decoder and the head train; the encoder is frozen
    trains = {n.split(".")[0] for n, p in built.named_parameters() if p.requires_grad}
    assert trains == {"decoder", "segmentation_head"}


def test_timm_traits_come_from_timm_for_any_timm_name():
    vit = registry().resolve("archs", "timm:test_vit").spec  # timm's pretrained_cfg marks it fixed-size
    assert vit.fixed_input_size and not vit.channels_last and vit.timm_name == "test_vit"
    assert registry().resolve("archs", "timm:convnext_tiny").spec.citation.startswith("Liu et al., A ConvNet")
    assert registry().resolve("archs", "swin_t").spec.fixed_input_size
    resnet = registry().resolve("archs", "resnet18").spec
    assert resnet.channels_last and not resnet.fixed_input_size
    hw = speed.detect("cpu")  # the stage asks the spec: a transformer stays channels-first under bf16
    assert speed.channels_last(None, hw, "bf16", not vit.channels_last) is False
    assert speed.channels_last(None, hw, "bf16", not resnet.channels_last) is True


def test_a_fixed_size_timm_model_publishes_its_size_so_plain_timm_rebuilds_it():
    # stage and store used to check names (swin/vit/deit) and missed timm's own fixed_input_size (test_vit)
    name = medzoo.train("timm:test_vit", "scratch,phantom_lesion", **FAST)[-1].name
    ckpt = store.get_local(name)
    config = json.loads((ckpt.path / store.CONFIG).read_text())
    assert config["model_args"]["img_size"] == 32
    plain = timm.create_model(config["architecture"], num_classes=2, **config["model_args"])
    plain.load_state_dict(models.load_safetensors(ckpt.path / store.WEIGHTS), strict=True)


def test_a_fixed_size_model_records_its_size_even_when_it_equals_the_display_size():
    # input_size is display-only: store used to take its last entry as the model's default size and left
    # img_size out when training matched it, so the model was rebuilt at whatever the library's default was
    _register_tiny(fixed_input_size=True)  # input_size=(3, 32, 32), and FAST trains at 32
    name = medzoo.train("tiny_net", "scratch,phantom_lesion", **FAST)[-1].name
    assert store.get_local(name).config["model_args"]["img_size"] == 32


def test_bad_traits_are_refused_when_registered():
    from medzoo.registry import KINDS, _validate

    with pytest.raises(TypeError, match="group_prefixes must be a tuple of tuples"):
        _validate(KINDS["archs"], ArchSpec(name="x", build=TinyNet, group_prefixes=["encoder."]))
    with pytest.raises(TypeError, match="hub_layout must be a medzoo.plugin.HubLayout"):
        _validate(KINDS["archs"], ArchSpec(name="x", build=TinyNet, hub_layout="timm"))


def test_traits_are_listed_as_plain_values():
    from conftest import run_cli

    rows = {r["name"]: r for r in json.loads(run_cli("list", "archs", "--json").stdout)}
    assert rows["unet_resnet18"]["hub_layout"] == "smp" and rows["resnet18"]["hub_layout"] == "timm"
    assert rows["swin_t"]["channels_last"] is False and rows["swin_t"]["fixed_input_size"] is True
    assert rows["unet_resnet18"]["group_prefixes"] == [["encoder."], ["decoder."], ["segmentation_head."]]

"""A weight source's facts come from its spec, filled in by its plugin: which source a chain without one starts
from, how the source shows in checkpoint names, and what the model card says of it (the core names no source)."""

from dataclasses import replace

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard

import medzoo
from medzoo import cards, store
from medzoo.cli import cli
from medzoo.plugin import MedzooError, SourceWeights, WeightSourceSpec
from medzoo.registry import registry
from medzoo.trainer import split_source

ARCH = "timm:test_resnet"  # a stock timm model of 1.5 MB
FAST = dict(overrides=["epochs=1", "image_size=32"], precision="fp32")


def _acme_source(**traits) -> WeightSourceSpec:
    return WeightSourceSpec("acme_src", lambda *, arch, arg=None: SourceWeights(None, tag="acme_src:0123abcd"),
                            "Acme's weights", takes_arg=True, arg_required=False, arg_help="release", **traits)


def test_a_plugin_sources_traits_name_the_checkpoint_and_fill_the_card():
    registry().add("sources", _acme_source(
        named_by_hash=True, base_model=lambda *, arg, tag, timm_name: f"acme/{timm_name}.{arg}",
        terms_note="The chain started from {name}; Acme's research-only terms apply."), plugin="acme")
    name = medzoo.train(ARCH, "acme_src:v2,phantom_lesion", **FAST)[-1].name
    assert name == f"{store.slug(ARCH)}.acme_src_0123abcd-phantom_lesion"  # by the tag's hash, not the argument
    card = ModelCard(cards.render(store.get_local(name), repo_id="lab/x"))
    assert card.data.to_dict()["base_model"] == "acme/test_resnet.v2"
    assert "The chain started from acme_src:v2; Acme's research-only terms apply." in card.text
    assert "terms of access" not in card.text  # no other source's (ImageNet's) note
    assert "PyTorch Image Models (timm)" in card.text  # a timm architecture: timm's layout cites timm


def test_a_source_without_traits_shows_by_its_name_and_adds_nothing_to_the_card():
    registry().add("sources", _acme_source(), plugin="acme")
    name = medzoo.train(ARCH, "acme_src:v2,phantom_lesion", **FAST)[-1].name
    assert name == f"{store.slug(ARCH)}.acme_src_v2-phantom_lesion"
    card = ModelCard(cards.render(store.get_local(name), repo_id="lab/x"))
    assert "base_model" not in card.data.to_dict() and "terms of access" not in card.text


def test_the_default_source_is_the_one_its_spec_marks():
    assert split_source(["phantom_lesion"]) == ("imagenet", ["phantom_lesion"])  # as shipped
    reg = registry()
    reg.entries["sources"]["imagenet"] = replace(reg.entries["sources"]["imagenet"], default=False)
    reg.add("sources", _acme_source(default=True), plugin="acme")
    assert split_source(["phantom_lesion", "phantom_agg"]) == ("acme_src", ["phantom_lesion", "phantom_agg"])
    listed = CliRunner().invoke(cli, ["list", "sources"]).output
    assert "(the default when --stages names no source) Acme's weights" in listed


def test_two_default_sources_refuse_chains_that_rely_on_one():
    registry().add("sources", _acme_source(default=True), plugin="acme")
    with pytest.raises(MedzooError, match=r"'acme_src' \(plugin 'acme'\).*'imagenet' \(plugin '[a-z_]+'\)"
                                          r"|'imagenet' \(plugin '[a-z_]+'\).*'acme_src' \(plugin 'acme'\)"):
        medzoo.train(ARCH, "phantom_lesion", **FAST)
    assert not store.checkpoints_dir().is_dir() or not any(store.checkpoints_dir().iterdir())
    # a chain naming its source does not need the default
    assert medzoo.train(ARCH, "scratch,phantom_lesion", **FAST)[-1].name == f"{store.slug(ARCH)}.scratch-phantom_lesion"


def test_no_default_source_is_one_clear_line():
    reg = registry()
    reg.entries["sources"]["imagenet"] = replace(reg.entries["sources"]["imagenet"], default=False)
    with pytest.raises(MedzooError, match="none is marked default; name the source first in --stages"):
        split_source(["phantom_lesion"])

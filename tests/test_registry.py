import json
import types

import pytest
import torch
from conftest import run_cli

import medzoo
from medzoo import hookimpl
from medzoo.registry import ArchSpec, DatasetSpec, MedzooError, MedzooPluginWarning, Registry

SHORT = ["swin_t", "resnet18", "resnet50", "densenet121", "mobilenetv2", "mobilenetv3", "efficientnet_b0",
         "inception_v3"]


def test_first_party_archs_and_sources_are_listed():
    names = {a.name for a in medzoo.list_archs()}
    assert set(SHORT) <= names and "timm" in names
    assert {s.name for s in medzoo.list_sources()} >= {"imagenet", "scratch", "file"}
    assert medzoo.get_arch("swin_t").timm_name == "swin_tiny_patch4_window7_224"
    assert medzoo.get_arch("swin_t").plugin == "timm_archs"


@pytest.mark.parametrize("name", SHORT + ["timm:test_resnet", "resnet50@truncate=1", "swin_t@truncate=1"])
def test_every_arch_builds_and_runs_forward(name):
    size = 96 if name.startswith("inception") else 64
    model = medzoo.create_model(name, num_classes=3, in_chans=1, img_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 3)


def test_truncation_keeps_names_and_shrinks_the_model():
    full = medzoo.create_model("resnet50", num_classes=2)
    cut = medzoo.create_model("resnet50@truncate=1", num_classes=2)
    n_full = sum(p.numel() for p in full.parameters())
    n_cut = sum(p.numel() for p in cut.parameters())
    assert n_cut < 0.5 * n_full
    # kept modules keep timm's parameter names, so full-model weights load into them by name
    full_sd = full.state_dict()
    assert all(k in full_sd for k in cut.state_dict() if not k.startswith("fc."))
    with pytest.raises(MedzooError, match="1..4"):
        medzoo.create_model("resnet50@truncate=9", num_classes=2)


@pytest.mark.parametrize("name, message", [
    ("resnt50", "did you mean 'resnet50'"),
    ("swin-t", "did you mean 'swin_t'"),
    ("timm", "needs an argument"),
    ("resnet50:x", "takes no ':' argument"),
    ("resnet50@truncat=1", "did you mean 'truncate'"),
    ("resnet50@truncate", "key=value"),
    ("timm:resnet5O", "timm has no model 'resnet5O'; did you mean 'resnet50'"),
])
def test_bad_names_get_a_clear_error(name, message):
    with pytest.raises(MedzooError, match=message):
        medzoo.create_model(name, num_classes=2)


def test_name_of_another_kind_is_pointed_out():
    with pytest.raises(MedzooError, match="'resnet18' is a architecture|'resnet18' is an? architecture"):
        medzoo.registry.registry().resolve("sources", "resnet18")


def test_a_catalogue_argument_typo_fails_on_resolve():
    # before: ssl:mocov2 resolved and failed only when the trainer loaded the source, after opening every dataset
    reg = medzoo.registry.registry()
    assert reg.resolve("sources", "ssl:moco_v2").arg == "moco_v2"
    with pytest.raises(MedzooError, match=r"unknown weight source 'ssl:mocov2'; did you mean 'ssl:moco_v2'"):
        reg.resolve("sources", "ssl:mocov2")
    with pytest.raises(MedzooError, match=r"^unknown weight source 'ssl:zzz' \(`medzoo list sources` shows all\)$"):
        reg.resolve("sources", "ssl:zzz")
    assert reg.resolve("sources", "imagenet:any_timm_tag").arg == "any_timm_tag"  # open arguments stay open


def _plugin(**hooks):
    return types.SimpleNamespace(**{k: hookimpl(v) for k, v in hooks.items()})


def _arch(name):
    return ArchSpec(name=name, build=lambda **kw: None)


def test_two_plugins_with_one_name_keep_the_first_found_and_warn_naming_both():
    from medzoo.registry import PluginInfo

    reg = Registry()
    for name in ("alpha", "beta"):  # the order entry points were found in
        reg.plugins[name] = PluginInfo(name, f"pkg-{name}", "1")
        reg.pm.register(_plugin(register_archs=lambda register, n=name: register(
            ArchSpec(name="dup", build=lambda **kw: None, description=n))), name=name)
    with pytest.warns(MedzooPluginWarning) as caught:
        reg.call_register_hooks()
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "'beta' (package pkg-beta)" in message and "'alpha' (package pkg-alpha)" in message
    assert reg.resolve("archs", "dup").spec.plugin == "alpha"
    assert reg.plugins["beta"].disabled == ["architecture 'dup' (taken by 'alpha')"]
    assert not reg.plugins["alpha"].disabled


def test_a_first_party_plugin_keeps_its_name_against_one_found_earlier():
    from medzoo.registry import FIRST_PARTY, PluginInfo

    reg = Registry()
    for name, package in (("thirdparty", "medzoo-acme"), ("firstparty", FIRST_PARTY)):
        reg.plugins[name] = PluginInfo(name, package, "1")
        reg.pm.register(_plugin(register_archs=lambda register: register(_arch("dup"))), name=name)
    with pytest.warns(MedzooPluginWarning, match="'thirdparty'.*disabled"):
        reg.call_register_hooks()
    assert reg.resolve("archs", "dup").spec.plugin == "firstparty"


def test_one_plugin_registering_a_name_twice_is_skipped_with_a_warning():
    reg = Registry()
    reg.pm.register(_plugin(register_archs=lambda register: [register(_arch("dup")), register(_arch("dup"))]),
                    name="sloppy")
    with pytest.warns(MedzooPluginWarning, match="'sloppy'.*architecture 'dup' twice"):
        reg.call_register_hooks()
    assert reg.list("archs") == []


def test_a_plugin_raising_in_its_hook_is_skipped_with_a_warning():
    def bad(register):
        register(_arch("half_registered"))
        raise RuntimeError("boom")

    reg = Registry()
    reg.pm.register(_plugin(register_archs=bad), name="broken")
    reg.pm.register(_plugin(register_archs=lambda register: register(_arch("fine"))), name="good")
    with pytest.warns(MedzooPluginWarning, match="'broken'.*register_archs.*boom"):
        reg.call_register_hooks()
    assert [s.name for s in reg.list("archs")] == ["fine"]  # nothing half-registered


def test_dataset_spec_task_is_validated():
    reg = Registry()
    reg.pm.register(_plugin(register_datasets=lambda register: register(
        DatasetSpec(name="x", open=lambda **kw: None, task="detection"))), name="odd")
    with pytest.warns(MedzooPluginWarning, match="detection"):
        reg.call_register_hooks()


def test_cli_list_json_info_and_plugins():
    rows = json.loads(run_cli("list", "archs", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["swin_t"]["timm_name"] == "swin_tiny_patch4_window7_224"
    assert "timm:<timm name>" in by_name
    out = run_cli("info", "swin_t").stdout
    assert "plugin: timm_archs (package medzoo" in out and "swin_tiny_patch4_window7_224" in out
    plugins = run_cli("plugins").stdout
    assert "timm_archs" in plugins and "register_archs" in plugins
    bad = run_cli("info", "resnet05", check=False)
    assert bad.returncode != 0 and "did you mean 'resnet50'" in bad.stderr and "Traceback" not in bad.stderr


def test_medzoo_load_plugins_restricts_what_loads():
    env = {"MEDZOO_LOAD_PLUGINS": "weight_sources"}
    assert "scratch" in run_cli("list", "sources", env=env).stdout
    assert json.loads(run_cli("list", "archs", "--json", env=env).stdout) == []
    assert "timm_archs" not in run_cli("plugins", env=env).stdout

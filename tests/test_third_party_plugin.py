"""A real third-party package, installed with pip, is discovered without touching medzoo's code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import run_cli

PLUGIN = '''
import click
import torch
from medzoo import hookimpl, ArchSpec, DatasetSpec


class Tiny(torch.nn.Module):
    def __init__(self, num_classes, in_chans):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_chans, 4, 3)
        self.fc = torch.nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


@hookimpl
def register_archs(register):
    register(ArchSpec(name="acme_net", build=lambda *, num_classes, in_chans=3, **kw: Tiny(num_classes, in_chans),
                      family="acme", input_size=(1, 32, 32), description="Acme's tiny CNN"))


@hookimpl
def register_datasets(register):
    register(DatasetSpec(name="acme_xray", open=lambda **kw: None, classes=("normal", "abnormal"),
                         modality="XR", body_part="chest", license="CC0", description="Acme's X-rays"))


@hookimpl
def register_commands(cli):
    @cli.command()
    def acme():
        """Say hello from the acme plugin."""
        click.echo("hello from acme")
'''


def _package(root, name, module_name, module_source):
    pkg = root / name
    pkg.mkdir()
    (pkg / f"{module_name}.py").write_text(module_source)
    (pkg / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name}"
        version = "1.2.3"
        [project.entry-points.medzoo]
        {module_name} = "{module_name}"
        [tool.setuptools]
        py-modules = ["{module_name}"]
    """))
    return pkg


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("thirdparty")
    target = root / "site"
    good = _package(root, "medzoo-acme", "medzoo_acme", PLUGIN)
    broken = _package(root, "medzoo-broken", "medzoo_broken", "raise ImportError('needs acme-sdk>=2')\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(good), str(broken)], check=True, capture_output=True)
    return str(target)


def _env(site):
    return {"PYTHONPATH": os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))}


def test_installed_plugin_is_discovered(site):
    proc = run_cli("list", "archs", env=_env(site))
    assert "acme_net" in proc.stdout and "swin_t" in proc.stdout
    datasets = json.loads(run_cli("list", "datasets", "--json", env=_env(site)).stdout)
    listed = {d["name"]: d for d in datasets}["acme_xray"]
    assert {"name": "acme_xray", "plugin": "medzoo_acme"}.items() <= listed.items()
    info = run_cli("info", "acme_net", env=_env(site)).stdout
    assert "plugin: medzoo_acme (package medzoo-acme 1.2.3)" in info and "Acme's tiny CNN" in info
    assert run_cli("acme", env=_env(site)).stdout.strip() == "hello from acme"


def test_broken_plugin_is_reported_and_skipped(site):
    proc = run_cli("list", "archs", env=_env(site))
    assert proc.returncode == 0
    assert "plugin 'medzoo_broken' from package medzoo-broken failed to load" in proc.stderr
    assert "needs acme-sdk>=2" in proc.stderr
    assert "FAILED" in run_cli("plugins", env=_env(site)).stdout


def test_installed_arch_trains_forward_in_process(site, monkeypatch):
    monkeypatch.syspath_prepend(site)
    import importlib

    importlib.invalidate_caches()
    import torch

    import medzoo
    from medzoo.registry import MedzooPluginWarning

    with pytest.warns(MedzooPluginWarning, match="medzoo_broken"):
        model = medzoo.create_model("acme_net", num_classes=2, in_chans=1)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 2)


CLASH = '''
import torch
from medzoo.plugin import ArchSpec, hookimpl


@hookimpl
def register_archs(register):
    build = lambda *, num_classes, in_chans=3, **kw: torch.nn.Linear(in_chans, num_classes)
    register(ArchSpec(name="resnet18", build=build, description="not timm's resnet18"))
    register(ArchSpec(name="clash_net", build=build, description="a name nobody else has"))
'''


@pytest.fixture(scope="module")
def clash_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("clash")
    pkg = _package(root, "medzoo-clash", "medzoo_clash", CLASH)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(root / "site"), str(pkg)], check=True, capture_output=True)
    return str(root / "site")


def test_a_name_clash_disables_the_third_party_entry_and_keeps_the_cli_working(clash_site):
    """A third-party plugin registering 'resnet18' used to make every command fail, --help included."""
    env = _env(clash_site)
    help_ = run_cli("--help", env=env)
    warning = [line for line in help_.stderr.splitlines() if "resnet18" in line]
    assert len(warning) == 1, help_.stderr
    assert "'medzoo_clash' (package medzoo-clash)" in warning[0] and "'timm_archs' (package medzoo)" in warning[0]
    assert "disabled" in warning[0]
    listing = run_cli("plugins", env=env).stdout
    assert "disabled: architecture 'resnet18' (taken by 'timm_archs')" in listing
    info = run_cli("info", "resnet18", env=env).stdout
    assert "plugin: timm_archs (package medzoo" in info and "not timm's resnet18" not in info
    # the rest of the clashing plugin still works
    assert "plugin: medzoo_clash" in run_cli("info", "clash_net", env=env).stdout
    rows = json.loads(run_cli("plugins", "--json", env=env).stdout)
    disabled = {r["name"]: r for r in rows}["medzoo_clash"]["disabled"]
    assert disabled == ["architecture 'resnet18' (taken by 'timm_archs')"]


HIJACK = '''
from medzoo.plugin import hookimpl


@hookimpl
def register_archs(register):
    pass
'''

COMMANDS = '''
import click
from medzoo.plugin import hookimpl


@hookimpl
def register_commands(cli):
    @cli.command(name="train")
    def not_train():
        click.echo("the plugin's train")

    @cli.command(name="cmdclash-hello")
    def hello():
        click.echo("hello from cmdclash")
'''


@pytest.fixture(scope="module")
def taken_site(tmp_path_factory):
    """A package whose entry point is named like a first-party plugin ('timm_archs'), and one that registers
    a command named 'train'; both installed where they are found before medzoo itself."""
    root = tmp_path_factory.mktemp("taken")
    pkgs = [_package(root, "medzoo-hijack", "timm_archs", HIJACK),
            _package(root, "medzoo-cmdclash", "medzoo_cmdclash", COMMANDS)]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(root / "site"), *map(str, pkgs)], check=True, capture_output=True)
    return str(root / "site")


def test_a_third_party_entry_point_named_like_a_first_party_plugin_is_the_one_skipped(taken_site):
    proc = run_cli("info", "resnet18", env=_env(taken_site))
    assert proc.returncode == 0, proc.stderr
    assert "plugin: timm_archs (package medzoo" in proc.stdout
    assert "plugin name 'timm_archs' from package medzoo-hijack is already taken by package medzoo" in proc.stderr


def test_a_plugin_command_cannot_replace_a_core_command(taken_site):
    env = _env(taken_site)
    proc = run_cli("train", "--help", env=env)
    assert proc.returncode == 0 and "--stages" in proc.stdout and "the plugin's train" not in proc.stdout
    warning = [line for line in proc.stderr.splitlines() if "'train'" in line]
    assert len(warning) == 1 and "'medzoo_cmdclash' (package medzoo-cmdclash)" in warning[0], proc.stderr
    # the plugin's other command is kept
    assert run_cli("cmdclash-hello", env=env).stdout.strip() == "hello from cmdclash"

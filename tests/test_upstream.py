"""Upstream weights: url: downloads (pin, hash, resume), the safe conversion of pickled checkpoints in each
method's wrapper format, the catalogue through a mirror, and the systematic-benchmark grid. Every file is
served by a local server on 127.0.0.1; nothing reaches the network."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from upstream_server import serve

import medzoo
from medzoo import experiment, store
from medzoo.models import create_model
from medzoo.registry import MedzooError, registry
from medzoo_plugins import upstream
from medzoo_plugins import upstream_fetch as fetching

ROOT = Path(__file__).resolve().parents[1]
TINY_ARCH = "timm:test_resnet"  # a tiny ResNet with the same key naming as resnet50 (conv1/bn1/layerN.M/fc)


@pytest.fixture
def server():
    with serve() as served:
        yield served


def _pth(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _backbone(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v for k, v in create_model(arch, num_classes=1000).state_dict().items()}


def _wrapped(fmt: str, sd: dict[str, torch.Tensor]) -> dict:
    """``sd`` (timm names, fc included) as each method publishes its checkpoint."""
    body = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    proj = {"fc.0.weight": torch.randn(8, 4), "fc.2.weight": torch.randn(4, 8)}
    if fmt == "moco":  # MoCo v1/v2, PCL: query + key encoders, the queue, an MLP projection in fc
        sdict = {f"module.encoder_q.{k}": v for k, v in {**body, **proj}.items()}
        sdict.update({f"module.encoder_k.{k}": v.clone() for k, v in list(body.items())[:5]})
        sdict["module.queue"] = torch.randn(4, 16)
        return {"epoch": 800, "arch": "resnet50", "state_dict": sdict,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.03}]}}
    if fmt == "swav":  # SwAV / DeepCluster v2 / SeLa v2: DataParallel prefix, projection head, prototypes
        return {**{f"module.{k}": v for k, v in body.items()}, "module.projection_head.0.weight": torch.randn(8, 4),
                "module.prototypes.weight": torch.randn(30, 4)}
    if fmt == "pycontrast":  # InsDis / PIRL / InfoMin
        return {"model": {**{f"module.encoder.{k}": v for k, v in body.items()},
                          "module.head.fc.weight": torch.randn(4, 4), "module.head_jig.fc.weight": torch.randn(4, 4)},
                "epoch": 200}
    if fmt == "supervised":  # iNat2021: a plain classifier under 'state_dict' (10,000-class head)
        return {"state_dict": {**body, "fc.weight": torch.randn(10, 4), "fc.bias": torch.randn(10)}, "best_acc1": 0.5}
    if fmt == "dino":
        return {"teacher": {**{f"backbone.{k}": v for k, v in body.items()}, "head.mlp.0.weight": torch.randn(4, 4)},
                "student": {"backbone.conv1.weight": torch.zeros(1)}}
    if fmt == "byol_pytorch":
        return {"online_network_state_dict": {**{f"online_network.encoder.{k}": v for k, v in body.items()},
                                              "online_network.projection.net.0.weight": torch.randn(4, 4)}}
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["moco", "swav", "pycontrast", "supervised", "dino", "byol_pytorch"])
def test_each_wrapper_format_converts_and_matches_every_backbone_tensor(tmp_path, fmt):
    sd = _backbone(TINY_ARCH)
    src = tmp_path / f"{fmt}.pth.tar"
    src.write_bytes(_pth(_wrapped(fmt, sd)))
    out = tmp_path / f"{fmt}.safetensors"
    result = fetching.convert_file(src, out, arch=TINY_ARCH, keymap=fmt)
    want = fetching.backbone_shapes(TINY_ARCH)
    assert result.matched == result.total == len(want)
    assert str(result).startswith(f"key map '{fmt}': matched {len(want)}/")
    converted = medzoo.models.load_safetensors(out)
    assert set(converted) == set(want)
    assert all(torch.equal(converted[k], sd[k]) for k in want)
    # without --keymap the converter finds a map that fits every tensor by itself
    auto = fetching.convert(fetching.read_pickle(src), TINY_ARCH, None)
    assert auto.matched == auto.total


def test_a_checkpoint_that_does_not_fit_is_refused_with_the_count(tmp_path):
    sd = _backbone(TINY_ARCH)
    sd.pop("layer4.0.conv1.weight")
    src = tmp_path / "partial.pth"
    src.write_bytes(_pth({"state_dict": sd}))
    with pytest.raises(MedzooError, match=r"matched \d+/\d+ backbone tensors \(e.g. layer4.0.conv1.weight missing\)"):
        fetching.convert_file(src, tmp_path / "x.safetensors", arch=TINY_ARCH, keymap="supervised")
    assert not (tmp_path / "x.safetensors").exists()


class _Payload:
    """Unpickling this would write a marker file: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned.txt"
    src = tmp_path / "evil.pth"
    src.write_bytes(_pth({"state_dict": {"conv1.weight": torch.zeros(1)}, "hook": _Payload(marker)}))
    with pytest.raises(MedzooError, match="refused it without running it"):
        fetching.convert_file(src, tmp_path / "evil.safetensors", arch=TINY_ARCH, keymap=None)
    proc = run_cli("weights", "convert", str(src), "--to", str(tmp_path / "evil2.safetensors"), "--arch", TINY_ARCH,
                   check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    assert not list(tmp_path.glob("*.safetensors"))


def test_weights_convert_cli_writes_safetensors_and_never_overwrites(tmp_path):
    src = tmp_path / "moco.pth.tar"
    src.write_bytes(_pth(_wrapped("moco", _backbone(TINY_ARCH))))
    out = tmp_path / "moco.safetensors"
    proc = run_cli("weights", "convert", str(src), "--to", str(out), "--arch", TINY_ARCH)
    n = len(fetching.backbone_shapes(TINY_ARCH))
    assert f"matched {n}/{n} backbone tensors" in proc.stdout and out.is_file()
    before = out.read_bytes()
    again = run_cli("weights", "convert", str(src), "--to", str(out), "--arch", TINY_ARCH, check=False)
    assert again.returncode == 1 and "does not overwrite" in again.stderr and out.read_bytes() == before


# -- url: downloads ---------------------------------------------------------------------------------------

def _safetensors_bytes(arch: str, seed: int = 0) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in _backbone(arch, seed).items()})


def test_url_source_downloads_once_pins_and_refuses_a_changed_file(server):
    server.files["/w.safetensors"] = _safetensors_bytes("resnet18", seed=1)
    url = f"{server.url}/w.safetensors"
    arch = registry().resolve("archs", "resnet18")
    w = upstream.load_url(arch=arch, arg=url)
    sha = hashlib.sha256(server.files["/w.safetensors"]).hexdigest()
    assert w.url == f"{url}#sha256={sha}" and w.tag == f"url:{sha[:12]}"
    assert w.license == "unknown"  # a URL says nothing of its terms: publishing will ask for --license
    assert fetching.pins()[url] == sha
    upstream.load_url(arch=arch, arg=url)  # second time: from the cache, no request
    assert len(server.requests) == 1
    server.files["/w.safetensors"] = _safetensors_bytes("resnet18", seed=2)  # the publisher swaps the file
    (fetching.root() / "downloads" / sha).rename(fetching.root() / "gone")  # and the cache is lost
    with pytest.raises(MedzooError, match="pinned"):
        upstream.load_url(arch=arch, arg=url)


def test_url_source_refuses_a_wrong_hash_and_keeps_nothing(server):
    server.files["/w.safetensors"] = _safetensors_bytes("resnet18")
    wrong = "0" * 64
    with pytest.raises(MedzooError, match=r"has sha256 [0-9a-f]{12}…, not 000000000000… \(the sha256 you gave\)"):
        medzoo.train("resnet18", [f"url:{server.url}/w.safetensors#sha256={wrong}", "phantom_agg"],
                     overrides=["epochs=1", "image_size=32"])
    assert not list((fetching.root() / "downloads").glob("*/w.safetensors"))
    assert fetching.pins() == {} and not store.list_local()


def test_a_truncated_download_resumes_where_it_stopped(server):
    data = _pth({"state_dict": _backbone(TINY_ARCH)})
    server.files["/m.pth"] = data
    url = f"{server.url}/m.pth"
    half = len(data) // 2
    part = fetching.partial_path(url)  # what a killed download leaves
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:half])
    path, sha = fetching.fetch(url, sha256=hashlib.sha256(data).hexdigest())
    assert path.read_bytes() == data and server.ranges("/m.pth") == [f"bytes={half}-"]
    assert not part.exists()


def test_url_pickle_needs_trust_then_converts_once(server, monkeypatch):
    server.files["/m.pth.tar"] = _pth(_wrapped("moco", _backbone(TINY_ARCH)))
    arch = registry().resolve("archs", TINY_ARCH)
    with pytest.raises(MedzooError, match="--trust-upstream"):
        upstream.load_url(arch=arch, arg=f"{server.url}/m.pth.tar")
    assert server.requests == []  # refused before downloading anything
    monkeypatch.setenv("MEDZOO_TRUST_UPSTREAM", "1")
    w = upstream.load_url(arch=arch, arg=f"{server.url}/m.pth.tar")
    assert set(w.state_dict) == set(fetching.backbone_shapes(TINY_ARCH))
    monkeypatch.delenv("MEDZOO_TRUST_UPSTREAM")
    again = upstream.load_url(arch=arch, arg=f"{server.url}/m.pth.tar")  # converted once: no trust needed any more
    assert again.sha256 == w.sha256 and len(server.requests) == 1


# -- the catalogue ---------------------------------------------------------------------------------------

def test_every_shipped_catalogue_entry_is_complete():
    entries = upstream.catalogue()
    names = {"ssl:insdis", "ssl:moco_v1", "ssl:moco_v2", "ssl:pcl_v1", "ssl:pcl_v2", "ssl:simclr_v1", "ssl:simclr_v2",
             "ssl:sela_v2", "ssl:infomin", "ssl:byol", "ssl:deepcluster_v2", "ssl:swav", "ssl:barlow_twins", "ssl:pirl",
             "inat2021"}
    assert set(entries) == names
    keymaps = registry().entries["keymaps"]
    for name, e in entries.items():
        assert e["url"].startswith("https://") and e["keymap"] in keymaps and e["arch"] == "resnet50"
        assert e["license"] and e["citation"] and e["method"], name
        registry().resolve("sources", name)
    assert entries["ssl:moco_v2"]["license"] == "cc-by-nc-4.0"
    listed = run_cli("list", "sources").stdout
    assert all(n in listed for n in names)
    info = run_cli("info", "ssl:barlow_twins").stdout
    assert "method: Barlow Twins" in info and "license: unknown" in info and "sha256: not published" in info


def test_a_catalogue_source_without_a_checksum_needs_trust():
    with pytest.raises(MedzooError, match="no published checksum: pass --trust-upstream"):
        medzoo.train("resnet50", "ssl:moco_v2,phantom_agg", overrides=["epochs=1"])
    with pytest.raises(MedzooError, match="convert it to a PyTorch state dict"):
        medzoo.train("resnet50", "ssl:byol,phantom_agg", overrides=["epochs=1"])


def _mirror_catalogue(tmp_path, server, name: str, data: bytes, **extra) -> dict:
    """Serve ``data`` from the local mirror and pin the entry to its hash through a user catalogue file."""
    entry = dict(upstream.catalogue()[name])
    server.files[f"/mirror/{entry['file']}"] = data
    entry.update(sha256=hashlib.sha256(data).hexdigest(), **extra)
    entry.pop("manual", None)
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({name: entry}))
    return {"MEDZOO_UPSTREAM_MIRROR": f"{server.url}/mirror/", "MEDZOO_UPSTREAM_CATALOGUE": str(path)}


def test_a_mirrored_file_must_still_match_the_catalogue_hash(tmp_path, server, monkeypatch):
    env = _mirror_catalogue(tmp_path, server, "ssl:swav", b"x")
    server.files["/mirror/swav_800ep_pretrain.pth.tar"] = b"not the catalogued file"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(MedzooError, match="has sha256"):
        upstream.load_entry("ssl:swav", registry().resolve("archs", "resnet50"))


def test_headline_chain_from_ssl_moco_v2_through_medagg_to_inbreast(tmp_path, server):
    """`medzoo train resnet50 --stages ssl:moco_v2,medagg,inbreast`, offline against the local mirror."""
    import datagen as g

    data = _pth(_wrapped("moco", _backbone("resnet50")))
    env = _mirror_catalogue(tmp_path, server, "ssl:moco_v2", data)
    cxr, head = g.make_chest_xray(tmp_path / "cxr"), g.make_head_ct(tmp_path / "hct")
    run_cli("data", "build", "medagg", "--from", f"chest_xray={cxr},head_ct={head}", "--out", str(tmp_path / "agg"),
            "--size", "32")
    inb = g.make_inbreast(tmp_path / "inb")
    proc = run_cli("train", "resnet50", "--stages", "ssl:moco_v2,medagg,inbreast", "--set", "epochs=1",
                   "--set", "image_size=32", "--precision", "fp32", "--data-root", f"medagg={tmp_path / 'agg'}",
                   "--data-root", f"inbreast={inb}", env=env)
    n = len(fetching.backbone_shapes("resnet50"))
    assert f"matched {n}/{n} backbone tensors" in proc.stdout
    last = store.get_local("resnet50.ssl_moco_v2-medagg-inbreast")
    src = last.lineage.source
    sha = hashlib.sha256(data).hexdigest()
    assert src.name == "ssl:moco_v2" and src.method == "MoCo v2" and src.license == "cc-by-nc-4.0"
    assert src.url.endswith(f"moco_v2_800ep_pretrain.pth.tar#sha256={sha}") and "Chen, Fan" in src.citation
    assert [s.dataset for s in last.lineage.stages] == ["medagg", "inbreast"]
    # the medagg stage started from the converted MoCo query encoder: its transfer loaded every backbone tensor
    assert store.get_local("resnet50.ssl_moco_v2-medagg").lineage.stages[0].transfer.startswith(f"loaded {n}/")
    # the catalogue URL was never asked for: only the mirror, once
    assert [p for p, _ in server.requests] == ["/mirror/moco_v2_800ep_pretrain.pth.tar"]


# -- the systematic-benchmark grid ------------------------------------------------------------------------

def test_systematic_benchmark_grid_resolves_every_cell():
    grid = experiment.load_grid(ROOT / "experiments" / "systematic_benchmark.yaml")
    sources = {c[0] for c in grid.chains.values()}
    assert {"scratch", "imagenet", "inat2021"} | {n for n in upstream.catalogue() if n.startswith("ssl:")} <= sources
    assert all(c[1:] in ([], ["medagg"]) for c in grid.chains.values())
    assert len(grid.chains) == 2 * len(sources)
    for cell in experiment.cells(grid):
        registry().resolve("sources", cell.stages[0])
        registry().resolve("archs", cell.arch)
        for d in cell.stages[1:]:
            registry().resolve("datasets", d)
    tasks = {t.dataset.partition(":")[0] for t in grid.targets}
    assert {"medmnist", "chest_xray", "head_ct", "bcss"} <= tasks


def test_a_mirror_folder_serves_catalogue_files_by_name_offline(tmp_path, monkeypatch):
    data = _pth(_wrapped("pycontrast", _backbone(TINY_ARCH)))
    entry = {"method": "InfoMin", "arch": TINY_ARCH, "keymap": "pycontrast", "url": "https://example.org/x/InfoMin.pth",
             "file": "InfoMin_tiny.pth", "sha256": hashlib.sha256(data).hexdigest(), "license": "unknown"}
    (tmp_path / "cat.json").write_text(json.dumps({"ssl:tiny_infomin": entry}))
    monkeypatch.setenv("MEDZOO_UPSTREAM_CATALOGUE", str(tmp_path / "cat.json"))
    monkeypatch.setenv("MEDZOO_UPSTREAM_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    arch = registry().resolve("archs", TINY_ARCH)
    (tmp_path / "mirror").mkdir()
    with pytest.raises(MedzooError, match="has no InfoMin_tiny.pth; put the file from https://example.org/x/InfoMin.pth"):
        upstream.load_entry("ssl:tiny_infomin", arch)
    (tmp_path / "mirror" / "InfoMin_tiny.pth").write_bytes(data)
    w = upstream.load_entry("ssl:tiny_infomin", arch)  # a checksum in the catalogue: no --trust-upstream needed
    assert set(w.state_dict) == set(fetching.backbone_shapes(TINY_ARCH)) and w.method == "InfoMin"
    assert fetching.pins() == {"https://example.org/x/InfoMin.pth": entry["sha256"]}

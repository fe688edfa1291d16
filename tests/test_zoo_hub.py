"""Publishing to a Hub test double, then loading from it with medzoo and with plain timm, revisions,
the hf-hub weight source, the offline cache, and what a failed or refused publish leaves behind."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from conftest import run_cli
from huggingface_hub import ModelCard
from zoofixtures import ARCH, TOKEN, ckpt, hub, hub_env, rewrite_config, same_state, state_of, trained, variant  # noqa: F401 — pytest fixtures

import medzoo
from medzoo import MedzooError, models, store
from medzoo import hub as mzhub

REPO = "lab/lesion-net"


def _local_state(name):
    return models.load_safetensors(store.get_local(name).path / store.WEIGHTS)


def test_publish_then_load_with_medzoo_and_plain_timm(ckpt, hub):
    result = mzhub.publish(ckpt, REPO)
    repo = hub.repos[REPO]
    assert result.commit == repo.branches["main"] and result.url == f"{hub.url}/{REPO}"
    assert sorted(repo.commits[result.commit].files) == [".gitattributes", "README.md", "config.json",
                                                         "model.safetensors"]
    assert all(auth == f"Bearer {TOKEN}" for method, _, auth in hub.requests if method == "POST")

    local = _local_state(ckpt)
    model = medzoo.load(f"hf-hub:{REPO}")
    assert same_state(state_of(model), local)
    assert model.medzoo_origin == f"hf-hub:{REPO}@{result.commit}"
    assert model.medzoo_lineage == store.get_local(ckpt).lineage
    plain = timm.create_model(f"hf-hub:{REPO}", pretrained=True).eval()
    assert same_state(state_of(plain), local)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
    assert plain.pretrained_cfg["tag"] == f"medzoo.{ckpt}" and plain.pretrained_cfg["input_size"] == [3, 32, 32]

    card = ModelCard(repo.commits[result.commit].files["README.md"].decode())
    meta = card.data.to_dict()
    assert meta["library_name"] == "timm" and meta["license"] == "cc0-1.0"
    assert {"medical-imaging", "transfer-learning"} <= set(meta["tags"]) and meta["datasets"] == ["phantom_lesion"]
    assert card.data.eval_results[0].dataset_name == "phantom_lesion"
    assert {r.metric_type for r in card.data.eval_results} == {"auc", "accuracy"}
    assert f'timm.create_model("hf-hub:{REPO}", pretrained=True)' in card.text
    assert "not for clinical use" in card.text.lower()
    published = json.loads(repo.commits[result.commit].files["config.json"])
    assert published == store.get_local(ckpt).full_config() and published["architecture"] == "test_resnet"


def test_second_publish_is_a_new_commit_and_the_old_one_still_loads(ckpt, hub):
    first = mzhub.publish(ckpt, REPO).commit
    v2 = variant(ckpt, "lesion-v2", seed=1)
    second = mzhub.publish(v2, REPO, commit_message="v2").commit
    assert first != second and hub.repos[REPO].commits[second].parent == first
    assert same_state(state_of(medzoo.load(f"hf-hub:{REPO}")), _local_state(v2))
    assert same_state(state_of(medzoo.load(f"hf-hub:{REPO}@{first}")), _local_state(ckpt))
    assert same_state(state_of(medzoo.load(f"hf-hub:{REPO}", revision=first)), _local_state(ckpt))
    assert same_state(state_of(timm.create_model(f"hf-hub:{REPO}@{first}", pretrained=True)), _local_state(ckpt))
    with pytest.raises(MedzooError, match="no such revision"):
        medzoo.load(f"hf-hub:{REPO}@{'f' * 40}")
    # a branch: --revision dev commits there and leaves main alone
    third = mzhub.publish(ckpt, REPO, revision="dev").commit
    assert hub.repos[REPO].branches == {"main": second, "dev": third}
    assert same_state(state_of(medzoo.load(f"hf-hub:{REPO}@dev")), _local_state(ckpt))


def test_training_continues_from_published_weights(ckpt, hub):
    commit = mzhub.publish(ckpt, REPO).commit
    result = medzoo.train(ARCH, f"hf-hub:{REPO}@{commit},phantom_lesion", overrides=["epochs=1", "image_size=32"],
                          precision="fp32")[-1]
    source = store.get_local(result.name).lineage.source.to_dict()
    assert source == {"name": f"hf-hub:{REPO}@{commit}", "tag": f"hf-hub:{REPO}@{commit}",
                      "sha256": store.get_local(ckpt).lineage.weights_sha256}
    with pytest.raises(MedzooError, match="holds a timm:test_resnet, not a resnet18"):
        medzoo.train("resnet18", f"hf-hub:{REPO},phantom_lesion", overrides=["epochs=1", "image_size=32"])


def test_hub_errors_are_one_line(ckpt, hub):
    from huggingface_hub import HfApi

    with pytest.raises(MedzooError, match="no such repo"):
        medzoo.load("hf-hub:lab/missing")
    api = HfApi()
    api.create_repo("lab/plain-timm")
    api.upload_file(path_or_fileobj=json.dumps({"architecture": "resnet18"}).encode(), path_in_repo="config.json",
                    repo_id="lab/plain-timm")
    with pytest.raises(MedzooError, match=r"not a medzoo model .*timm.create_model\(\"hf-hub:lab/plain-timm\""):
        medzoo.load("hf-hub:lab/plain-timm")
    with pytest.raises(MedzooError, match="--repo-id 'nope' is not ORG/NAME"):
        mzhub.publish(ckpt, "nope")


def test_private_repo_needs_the_token(ckpt, hub, monkeypatch):
    mzhub.publish(ckpt, "lab/private", private=True)
    assert hub.repos["lab/private"].private
    assert same_state(state_of(medzoo.load("hf-hub:lab/private", device="cpu")), _local_state(ckpt))
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(store.home() / "no_login" / "token"))
    with pytest.raises(MedzooError, match="HTTP 401.*grants write access"):
        mzhub.publish(ckpt, "lab/other")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(store.home() / "fresh_cache"))
    with pytest.raises(MedzooError, match="no such repo .*private: set HF_TOKEN"):
        medzoo.load("hf-hub:lab/private")


def test_tampered_download_fails_the_hash_check(ckpt, hub):
    from huggingface_hub import constants

    commit = mzhub.publish(ckpt, REPO).commit
    medzoo.load(f"hf-hub:{REPO}")  # fills the cache
    snapshot = Path(constants.HF_HUB_CACHE) / "models--lab--lesion-net" / "snapshots" / commit
    weights = (snapshot / store.WEIGHTS).resolve()  # the blob the snapshot links to
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(MedzooError, match="not the .* its metadata records"):
        medzoo.load(f"hf-hub:{REPO}@{commit}")


def test_catalogue_name_loads_the_pinned_published_weights(ckpt, hub, tmp_path, monkeypatch):
    first = mzhub.publish(ckpt, REPO)
    mzhub.publish(variant(ckpt, "lesion-v2", seed=2), REPO)
    cat = tmp_path / "catalogue.json"
    cat.write_text(json.dumps({"models": {"lesion-demo": first.catalogue_entry}}))
    monkeypatch.setenv("MEDZOO_CATALOGUE", str(cat))
    assert first.catalogue_entry["revision"] == first.commit
    model = medzoo.load("lesion-demo")
    assert same_state(state_of(model), _local_state(ckpt)) and model.medzoo_origin.endswith(first.commit)
    entry = dict(first.catalogue_entry, weights_sha256="0" * 64)  # the catalogue's own pin is checked too
    cat.write_text(json.dumps({"models": {"lesion-demo": entry}}))
    with pytest.raises(MedzooError, match="sha256"):
        medzoo.load("lesion-demo")


def test_refuses_checkpoints_without_metrics_unless_allowed(ckpt, hub):
    (store.get_local(ckpt).path / "metrics.json").unlink()
    rewrite_config(ckpt, lambda c: c["medzoo"]["stages"][-1].update(val_metrics={}))
    with pytest.raises(MedzooError, match="no evaluation metrics .*--allow-no-metrics"):
        mzhub.publish(ckpt, REPO)
    assert REPO not in hub.repos
    result = mzhub.publish(ckpt, REPO, allow_no_metrics=True)
    readme = hub.repos[REPO].commits[result.commit].files["README.md"].decode()
    assert "No evaluation metrics were recorded" in readme and "model-index" not in readme


def test_failed_publish_leaves_the_checkpoint_intact(ckpt, hub, monkeypatch):
    import huggingface_hub.utils._http as hf_http

    from medzoo.cli import cli

    monkeypatch.setattr(hf_http.time, "sleep", lambda s: None)  # huggingface_hub retries a 500 with backoff
    path = store.get_local(ckpt).path
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    hub.fail_commits = True
    res = CliRunner().invoke(cli, ["publish", ckpt, "--repo-id", REPO])
    assert res.exit_code == 1
    error = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "HTTP 500" in error[0] and "local checkpoint is unchanged" in error[0]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert len(hub.repos[REPO].commits) == 1  # only the repo's initial commit
    assert TOKEN not in res.output


def test_cli_dry_run_publish_and_card_never_write_the_token(ckpt, hub, tmp_path):
    env = hub_env(hub, tmp_path)
    out = tmp_path / "dry"
    dry = run_cli("publish", ckpt, "--repo-id", REPO, "--dry-run", "--out", str(out), env=env)
    assert sorted(p.name for p in out.iterdir()) == [".medzoo-dry-run", "README.md", "config.json", "model.safetensors"]
    assert all(name in dry.stdout for name in ("README.md", "config.json", "model.safetensors"))
    assert (out / "model.safetensors").read_bytes() == (store.get_local(ckpt).path / store.WEIGHTS).read_bytes()
    assert REPO not in hub.repos  # a dry run sends nothing
    run_cli("publish", ckpt, "--repo-id", REPO, "--dry-run", "--out", str(out), env=env)  # replaces its own folder

    pub = run_cli("publish", ckpt, "--repo-id", REPO, "--commit-message", "first release", env=env)
    commit = hub.repos[REPO].branches["main"]
    assert f"{hub.url}/{REPO}" in pub.stdout and commit in pub.stdout
    assert hub.repos[REPO].commits[commit].message == "first release"
    card_file = tmp_path / "README.md"
    card = run_cli("card", ckpt, "--repo-id", REPO, "-o", str(card_file), env=env)
    assert card_file.read_text().startswith("---\n") and "## Lineage" in card_file.read_text()
    listing = run_cli("list", "weights", env=env)
    assert ckpt in listing.stdout

    # the token reached the server, and nothing anyone can read afterwards
    assert any(auth == f"Bearer {TOKEN}" for _, _, auth in hub.requests)
    for proc in (dry, pub, card, listing):
        assert TOKEN not in proc.stdout + proc.stderr
    for root in (tmp_path, store.home()):
        for f in root.rglob("*"):
            if f.is_file():
                assert TOKEN.encode() not in f.read_bytes(), f

    bad = run_cli("publish", "no-such-ckpt", "--repo-id", REPO, env=env, check=False)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "medzoo list weights" in bad.stderr


def test_offline_load_from_a_prepopulated_cache(ckpt, tmp_path):
    """The Hugging Face cache layout by hand (refs/main with no trailing newline), then HF_HUB_OFFLINE=1
    in a fresh process with an endpoint nothing listens on."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "hf_cache" / "models--lab--lesion-net"
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in (store.WEIGHTS, store.CONFIG):
        shutil.copy(store.get_local(ckpt).path / f, snap / f)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    script = textwrap.dedent(f"""
        import sys, medzoo, timm, torch
        from safetensors.torch import load_file
        ref = load_file({str(snap / store.WEIGHTS)!r})
        for name in ("hf-hub:{REPO}", "hf-hub:{REPO}@{commit}"):
            m = medzoo.load(name)
            assert m.medzoo_origin == "hf-hub:{REPO}@{commit}", m.medzoo_origin
            assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())
        t = timm.create_model("hf-hub:{REPO}", pretrained=True)
        assert all(torch.equal(v, ref[k]) for k, v in t.state_dict().items())
        try:
            medzoo.load("hf-hub:lab/not-cached")
        except medzoo.MedzooError as e:
            print("ERR", e)
        print("OK")
    """)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf_cache"), "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HOME": str(tmp_path / "hf_home"), "MEDZOO_HOME": str(tmp_path / "empty_home")}
    proc = subprocess.run([sys.executable, "-c", script], env={**__import__("os").environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    assert "ERR hf-hub:lab/not-cached: config.json is not in the Hugging Face cache" in proc.stdout

"""The staged trainer: chains, freeze policies, transfer, reuse, resume after kill -9, DDP, bad input."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import BIN
from safetensors.torch import load_file, save_file

import medzoo
from medzoo import store
from medzoo.data import DataSource
from medzoo.models import block_groups, state_sha256
from medzoo.registry import DatasetSpec, MedzooError, registry

TINY = ["epochs=1", "image_size=32", "batch_size=32"]


def tiny(*extra):
    return TINY + list(extra)


def weights(name):
    return load_file(str(store.checkpoints_dir() / name / store.WEIGHTS))


def test_three_stage_chain_writes_one_checkpoint_per_stage_with_lineage(capsys):
    results = medzoo.train("resnet18", "scratch,phantom_agg,phantom_lesion", overrides=tiny(), precision="fp32")
    assert [r.name for r in results] == ["resnet18.scratch-phantom_agg", "resnet18.scratch-phantom_agg-phantom_lesion"]
    last = store.get_local(results[-1].name)
    lin = last.lineage
    assert lin.source.name == "scratch"
    assert [s.dataset for s in lin.stages] == ["phantom_agg", "phantom_lesion"]
    first = store.get_local(results[0].name)
    # the lineage chains by weights: stage 2's parent is stage 1's file
    assert lin.stages[1].parent_sha256 == first.lineage.weights_sha256 == results[0].weights_sha256
    assert lin.weights_sha256 == medzoo.models.sha256_file(last.path / store.WEIGHTS)
    assert last.config["architecture"] == "resnet18" and last.config["label_names"] == ["absent", "present"]
    assert last.config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    for f in ("history.csv", "metrics.json", "learning_curve.png"):
        assert (last.path / f).stat().st_size > 0
    assert lin.stages[1].recipe["image_size"] == 32 and lin.stages[1].versions["torch"]
    out = capsys.readouterr().out
    assert "loaded 120/122 tensors (head re-initialised)" in out
    # nothing left in the work area once stages are done
    assert not any(store.runs_dir().glob("*/last.safetensors"))


def test_stage_reuse_trains_only_what_changed(capsys):
    medzoo.train("resnet18", "scratch,phantom_agg,phantom_lesion", overrides=tiny(), precision="fp32")
    capsys.readouterr()
    results = medzoo.train("resnet18", "scratch,phantom_agg,phantom_lesion", overrides=tiny(), precision="fp32")
    assert [r.reused for r in results] == [True, True]
    # a different last stage (here: another seed for it) reuses the shared first stage
    results = medzoo.train("resnet18", "scratch,phantom_agg,phantom_lesion",
                           overrides=tiny("phantom_lesion.seed=7"), precision="fp32")
    assert [r.reused for r in results] == [True, False]
    # same name, other inputs: stored beside the first, never over it
    assert results[1].name.startswith("resnet18.scratch-phantom_agg-phantom_lesion~")
    assert store.find_local("resnet18.scratch-phantom_agg-phantom_lesion").lineage.stages[-1].seed == 0
    assert "other inputs" in capsys.readouterr().out
    forced = medzoo.train("resnet18", "scratch,phantom_agg", overrides=tiny(), precision="fp32", force=True)
    assert not forced[0].reused


def _parent_file(tmp_path, arch="resnet18", **kw):
    model = medzoo.create_model(arch, num_classes=1000, **kw)
    path = tmp_path / "parent.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


@pytest.mark.parametrize("policy, trainable_groups", [("full", None), ("head", 1), ("top:2", 3)])
def test_freeze_policy_trains_exactly_what_it_claims(tmp_path, policy, trainable_groups):
    path, model = _parent_file(tmp_path)
    groups = block_groups(model)
    claimed = {n for g in (groups if trainable_groups is None else groups[-trainable_groups:]) for n in g}
    medzoo.train("resnet18", [f"file:{path}", "phantom_lesion"], overrides=tiny(f"freeze={policy}"), precision="fp32")
    after = weights(store.list_local()[0].name)
    before = load_file(str(path))
    params = {n for n, _ in model.named_parameters()}
    head = {"fc.weight", "fc.bias"}  # re-initialised for the new classes, so it differs anyway
    changed = {n for n in params - head if not torch.equal(after[n], before[n])}
    assert changed == claimed - head
    # BatchNorm statistics move only where the layer trains (frozen BatchNorm runs in eval mode)
    stats = {n for n in after if n.endswith("running_mean") and not torch.equal(after[n], before[n])}
    assert stats == {n.rsplit(".", 1)[0] + ".running_mean" for n in claimed} & after.keys()


def test_gradual_and_lld_policies():
    model = medzoo.create_model("resnet18", num_classes=2)
    groups = block_groups(model)
    gradual = registry().resolve("policies", "gradual:2").spec
    for epoch, n_groups in [(0, 1), (1, 1), (2, 2), (4, 3), (99, len(groups))]:
        gradual.apply(model, arg="2", epoch=epoch)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {n for g in groups[-n_groups:] for n in g}, epoch
    scales = registry().resolve("policies", "lld:0.5").spec.apply(model, arg="0.5")
    assert all(p.requires_grad for p in model.parameters())
    assert scales["fc.weight"] == 1.0 and scales["conv1.weight"] < scales["layer4.0.conv1.weight"] < 1.0
    auto = registry().resolve("policies", "auto").spec
    assert [auto.resolve(n_train=n) for n in (10, 5000, 50000)] == ["head", "top:2", "full"]
    assert auto.resolve(arg="10,20", n_train=15) == "top:2"
    with pytest.raises(MedzooError, match="K must be 0..5"):
        registry().resolve("policies", "top:9").spec.apply(model, arg="9")


def test_grey_input_adapts_the_first_conv_and_head_is_kept_when_classes_match(tmp_path, capsys):
    path, model = _parent_file(tmp_path)
    medzoo.train("resnet18", [f"file:{path}", "phantom_lesion"], overrides=tiny("in_chans=1", "freeze=head"),
                 precision="fp32")
    name = store.list_local()[0].name
    w = weights(name)
    expected = load_file(str(path))["conv1.weight"].sum(1, keepdim=True)  # timm: sum over RGB
    assert w["conv1.weight"].shape == (64, 1, 7, 7) and torch.allclose(w["conv1.weight"], expected)
    assert store.get_local(name).config["model_args"] == {"in_chans": 1}
    assert "conv1.weight 3→1 channels" in capsys.readouterr().out
    # continuing from that checkpoint on a dataset with the same classes keeps its head
    medzoo.train("resnet18", [name, "phantom_lesion"], overrides=tiny("in_chans=1", "lr=0.0001"), precision="fp32")
    assert "(head loaded" in capsys.readouterr().out


def _cli_env(home):
    return {**os.environ, "MEDZOO_HOME": str(home)}


def test_resume_after_kill_9_gives_identical_weights(tmp_path):
    cmd = [str(BIN / "medzoo"), "train", "resnet18", "--stages", "scratch,phantom_lesion", "--precision", "fp32",
           "--set", "epochs=4", "--set", "image_size=32", "--set", "augment=strong"]
    clean = tmp_path / "clean"
    subprocess.run(cmd, env=_cli_env(clean), check=True, capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd, env=_cli_env(killed), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not list((killed / "runs").glob("*/last.safetensors")):
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints").exists() or not any(p for p in (killed / "checkpoints").iterdir()
                                                             if not p.name.startswith("."))
    again = subprocess.run(cmd, env=_cli_env(killed), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming after epoch" in again.stdout
    name = "resnet18.scratch-phantom_lesion"
    a = load_file(str(clean / "checkpoints" / name / store.WEIGHTS))
    b = load_file(str(killed / "checkpoints" / name / store.WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import torch.distributed as dist
        import medzoo
        import medzoo.stage as T
        from medzoo.models import state_sha256

        run = T.StageTrainer.run
        def spy(self):
            out = run(self)
            with open(r"{tmp_path}/rank%d.txt" % dist.get_rank(), "w") as f:
                f.write(state_sha256(self.model.state_dict()))
            return out
        T.StageTrainer.run = spy
        medzoo.train("resnet18", "scratch,phantom_lesion", overrides=["epochs=2", "image_size=32", "batch_size=16"],
                     precision="fp32")
    """))
    env = {**os.environ, "MEDZOO_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (tmp_path / "rank0.txt").read_text(), (tmp_path / "rank1.txt").read_text()
    assert r0 == r1
    saved = load_file(str(tmp_path / "home" / "checkpoints" / "resnet18.scratch-phantom_lesion" / store.WEIGHTS))
    assert state_sha256(saved) == r0
    assert proc.stdout.count("saved ") == 1  # only rank 0 writes


class _Empty(DataSource):
    def read(self, record):
        raise AssertionError("never read")


@pytest.mark.parametrize("stages, message", [
    ("scratch,phantom_agg,phantom_lesoin", "did you mean 'phantom_lesion'"),
    ("scrach,phantom_agg", "did you mean 'scratch'"),
    ("scratch,empty_set", "has no training images"),
    ("scratch", "has no training stage"),
])
def test_bad_chains_fail_before_anything_is_written(stages, message):
    registry().entries["datasets"]["empty_set"] = DatasetSpec(
        name="empty_set", open=lambda **kw: _Empty("empty_set", "classification", ["a", "b"], []))
    with pytest.raises(MedzooError, match=message):
        medzoo.train("resnet18", stages, overrides=tiny())
    assert not store.home().exists() or not list(store.home().rglob("*.safetensors"))


def test_incompatible_and_pickle_files_are_refused(tmp_path):
    path, _ = _parent_file(tmp_path, arch="densenet121")
    with pytest.raises(MedzooError, match=r"don't fit this model: \d+ of \d+ backbone tensors"):
        medzoo.train("resnet18", [f"file:{path}", "phantom_lesion"], overrides=tiny())
    pickle = tmp_path / "weights.pth"
    torch.save({"a": torch.zeros(1)}, pickle)
    with pytest.raises(MedzooError, match="pickle checkpoint, which medzoo never loads"):
        medzoo.train("resnet18", [f"file:{pickle}", "phantom_lesion"], overrides=tiny())
    with pytest.raises(MedzooError, match="unknown recipe key 'epoch' in --set; did you mean 'epochs'"):
        medzoo.train("resnet18", "scratch,phantom_lesion", overrides=["epoch=1"])
    with pytest.raises(MedzooError, match="not in --stages"):
        medzoo.train("resnet18", "scratch,phantom_lesion", overrides=["inbreast.epochs=1"])
    assert not store.home().exists() or not list(store.home().rglob("*.safetensors"))


def test_cli_train_recipe_file_and_errors(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("defaults: {image_size: 32, epochs: 1}\nphantom_lesion: {lr: 0.0005, freeze: 'top:1'}\n")
    env = {"MEDZOO_HOME": str(tmp_path / "home")}
    from conftest import run_cli

    out = run_cli("train", "resnet18", "--stages", "scratch,phantom_lesion", "--recipe", str(recipe),
                  "--precision", "fp32", env=env).stdout
    assert "resnet18.scratch-phantom_lesion" in out
    ckpt = tmp_path / "home" / "checkpoints" / "resnet18.scratch-phantom_lesion" / "config.json"
    import json

    stage = json.loads(ckpt.read_text())["medzoo"]["stages"][-1]
    assert stage["recipe"]["lr"] == 0.0005 and stage["freeze"] == "top:1"
    assert "resnet18.scratch-phantom_lesion" in run_cli("list", "weights", env=env).stdout
    bad = run_cli("train", "resnet18", "--stages", "scratch,phantom_lesion", "--set", "lr=fast", env=env, check=False)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("Error: recipe key 'lr'")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_trains_on_real_layouts_through_the_preprocessed_cache(tmp_path):
    from datagen import make_chest_xray, make_inbreast

    roots = {"chest_xray": str(make_chest_xray(tmp_path / "cxr")), "inbreast": str(make_inbreast(tmp_path / "inb"))}
    results = medzoo.train("resnet18", "scratch,chest_xray,inbreast", precision="fp32", data_roots=roots,
                           overrides=tiny("in_chans=1", "freeze=full", "patience=0", "warmup_epochs=0"))
    assert [r.dataset for r in results] == ["chest_xray", "inbreast"]
    lin = store.get_local(results[-1].name).lineage
    assert lin.stages[0].recipe["preprocess"]["clahe"] == 2.0  # chest X-ray's default preprocessing
    assert lin.in_chans == 1 and lin.stages[1].classes == ["benign", "malignant"]
    caches = [p for p in (store.home() / "cache").iterdir() if p.name not in ("files", "hashes")]
    assert len(caches) == 2  # one preprocessed cache per dataset (beside the file-hash and image-hash caches)


def test_imagenet_source_loads_timm_weights_from_the_hf_cache_without_the_network(tmp_path, monkeypatch, capsys):
    """Stands in for a machine that downloaded timm's weights once: same cache layout, no network."""
    cache = tmp_path / "hf"
    snap = cache / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    fake_imagenet = medzoo.create_model("resnet18", num_classes=1000)
    save_file({k: v.contiguous() for k, v in fake_imagenet.state_dict().items()}, str(snap / "model.safetensors"))
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any request would fail
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache / "hub"))
    results = medzoo.train("resnet18", "imagenet,phantom_lesion", overrides=tiny("freeze=head"), precision="fp32")
    assert results[0].name == "resnet18-phantom_lesion"  # the default ImageNet weights show as nothing
    lin = store.get_local(results[0].name).lineage
    assert lin.source.tag == "imagenet:a1_in1k"
    assert lin.source.sha256 == state_sha256(fake_imagenet.state_dict())
    w = weights(results[0].name)
    assert torch.equal(w["layer4.1.conv2.weight"], fake_imagenet.state_dict()["layer4.1.conv2.weight"])

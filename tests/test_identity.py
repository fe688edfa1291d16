"""Data identity (what a stage trains on, computed by the core), leak-free medagg and chains, and the
cleanup of temporary build folders left by killed builds (issues 12 and 13)."""

import logging
import os
import subprocess

import cv2
import datagen as g
import numpy as np
import pytest
from conftest import run_cli

import medzoo
from medzoo import store
from medzoo.cache import cache_home, open_dataset
from medzoo.data import DataSource, Record
from medzoo.registry import DatasetSpec, MedzooError, registry
from medzoo_plugins.medagg_build import BuildConfig, build_medagg

TINY = ["epochs=1", "image_size=32", "batch_size=32", "freeze=full", "warmup_epochs=0"]


def _write_fixed_size_png(path, img):
    """An uncompressed PNG: its byte size depends only on the image's shape, so different pixels can be
    written with the same size (and then the same mtime, as cp -p or rsync -a leave it); same inode."""
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    assert ok
    path.write_bytes(buf.tobytes())


def _cached_equals_file(root, path_name):
    """The preprocessed cache a training run reads holds the file's current pixels."""
    cached = open_dataset("head_ct", root, preprocess=True)
    raw = open_dataset("head_ct", root)
    rec = next(r for r in raw.records if r.id.endswith(path_name))
    expected, _ = raw.prepare(rec, cached.cfg)
    return np.array_equal(cached.read(next(r for r in cached.records if r.id == rec.id)), expected)


def test_changed_pixels_retrain_the_stage_and_rebuild_the_cache_and_verify_catches_a_restored_mtime(
        tmp_path, capsys):
    root = g.make_head_ct(tmp_path / "hct")
    png = root / "head_ct" / "head_ct" / "000.png"
    _write_fixed_size_png(png, g.pattern(1, (50, 44)))
    chain = dict(overrides=TINY, precision="fp32", data_roots={"head_ct": str(root)})
    first = medzoo.train("resnet18", "scratch,head_ct", **chain)[0]
    assert not first.reused
    cache_before = open_dataset("head_ct", root, preprocess=True).path

    # new pixels, new mtime (an ordinary overwrite): caught by default
    _write_fixed_size_png(png, g.pattern(2, (50, 44)))
    capsys.readouterr()
    second = medzoo.train("resnet18", "scratch,head_ct", **chain)[0]
    assert not second.reused and "reusing the stored checkpoint" not in capsys.readouterr().out
    assert open_dataset("head_ct", root, preprocess=True).path != cache_before
    assert _cached_equals_file(root, "000.png")

    # new pixels under the same size, mtime and inode (cp -p, rsync -a, unzip): the stat cache cannot see it…
    st = png.stat()
    _write_fixed_size_png(png, g.pattern(3, (50, 44)))
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (png.stat().st_size, png.stat().st_ino) == (st.st_size, st.st_ino)
    assert not _cached_equals_file(root, "000.png")
    # …`data check --verify` re-hashes every file and names the changed one…
    out = run_cli("data", "check", "head_ct", "--data-root", f"head_ct={root}", "--verify").stdout
    assert f"changed: {png}" in out and "1 changed" in out
    # …and the next train sees the new content: retrains on a rebuilt cache holding the new pixels
    capsys.readouterr()
    third = medzoo.train("resnet18", "scratch,head_ct", **chain)[0]
    assert not third.reused and "reusing the stored checkpoint" not in capsys.readouterr().out
    assert _cached_equals_file(root, "000.png")
    # nothing changed since: the stage is reused, and says why
    assert medzoo.train("resnet18", "scratch,head_ct", **chain)[0].reused
    assert "reusing the stored checkpoint: same arch, parent weights, data and recipe" in capsys.readouterr().out


def _folder(root, names, seed0):
    for i, name in enumerate(names):
        g.write_png(root / name, g.pattern(seed0 + i))
    return root


def test_a_rebuilt_medagg_gets_a_new_identity_and_cache(tmp_path):
    src = _folder(tmp_path / "src", [f"{c}/{i}.png" for c in "ab" for i in range(6)], 10)
    out = tmp_path / "medagg"
    build_medagg(BuildConfig([(f"imagefolder:{src}", None)], out, size=32))
    small = open_dataset("medagg", out)
    small_id = small.fingerprint()
    small_cache = open_dataset("medagg", out, preprocess={"size": 32}).path
    build_medagg(BuildConfig([(f"imagefolder:{src}", None)], out, size=48))  # same folder, same records
    big = open_dataset("medagg", out)
    assert [r.id for r in big.records] == [r.id for r in small.records]
    assert big.fingerprint() != small_id
    assert open_dataset("medagg", out, preprocess={"size": 32}).path != small_cache


def test_skip_bad_changes_the_identity_and_never_shares_a_cache(tmp_path):
    root = g.make_head_ct(tmp_path / "hct")
    (root / "head_ct/head_ct/003.png").write_bytes(b"not a png")
    skipping = open_dataset("head_ct", root, preprocess={"size": 16}, skip_bad=True)
    assert len(skipping.records) == 19
    # what the stage trains on (19 images) is not the data as listed (20)
    assert skipping.fingerprint() != open_dataset("head_ct", root).fingerprint()
    # a run without --skip-bad does not silently take the cache that left the bad file out
    with pytest.raises(MedzooError, match="003.png: not a readable image"):
        open_dataset("head_ct", root, preprocess={"size": 16})
    good = g.make_head_ct(tmp_path / "good")
    full = open_dataset("head_ct", good, preprocess={"size": 16})
    assert open_dataset("head_ct", good, preprocess={"size": 16}, skip_bad=True).path != full.path


class PngFolder(DataSource):
    """A third-party dataset written from docs/plugins.md: it overrides nothing about identity."""

    def read(self, record):
        return cv2.imread(str(record.meta["path"]), cv2.IMREAD_GRAYSCALE)


def _register_png_folder(root, declare: bool):
    def open_(root_=None, arg=None, **kw):
        records = [Record(p.name, i % 2, "train" if i < 6 else "val", meta={"path": p},
                          **({"files": [p]} if declare else {}))
                   for i, p in enumerate(sorted(root.glob("*.png")))]
        return PngFolder("acme_png", "classification", ["no", "yes"], records)
    registry().add("datasets", DatasetSpec(name="acme_png", open=open_), plugin="acme")


def test_a_plugin_that_declares_its_files_gets_identity_without_overriding_anything(tmp_path):
    root = _folder(tmp_path / "png", [f"{i}.png" for i in range(8)], 40)
    _register_png_folder(root, declare=True)
    before = open_dataset("acme_png", preprocess={"size": 16, "channels": 1})
    g.write_png(root / "0.png", np.full((48, 48), 255, np.uint8))
    after = open_dataset("acme_png", preprocess={"size": 16, "channels": 1})
    assert after.fingerprint() != before.fingerprint() and after.path != before.path
    assert after.read(after.records[0]).mean() == 255  # the new pixels, not the stale cache's


def test_a_plugin_that_declares_nothing_is_identified_by_its_pixels_with_a_warning(tmp_path, caplog):
    root = _folder(tmp_path / "png", [f"{i}.png" for i in range(8)], 40)
    _register_png_folder(root, declare=False)
    with caplog.at_level(logging.WARNING, logger="medzoo.data"):
        before = open_dataset("acme_png").fingerprint()
    assert "declares no files" in caplog.text and "Record.files" in caplog.text
    g.write_png(root / "0.png", np.full((48, 40), 255, np.uint8))
    assert open_dataset("acme_png").fingerprint() != before


def _split_folder(root, splits, seed0):
    """imagefolder with explicit split folders: {split: n images per class a, b}."""
    seed = seed0
    for split, n in splits.items():
        for c in "ab":
            for i in range(n):
                seed += 1
                g.write_png(root / split / c / f"{i}.png", g.pattern(seed))
    return root


@pytest.mark.parametrize("order", ["train_first", "test_first"])
def test_medagg_dedupe_keeps_the_held_out_copy_whatever_the_from_order(tmp_path, order):
    trainish = _split_folder(tmp_path / "r", {"train": 5, "val": 2}, 100)
    target = _split_folder(tmp_path / "t", {"train": 5, "val": 2, "test": 2}, 300)
    (trainish / "train" / "a" / "dup.png").write_bytes((target / "test" / "a" / "0.png").read_bytes())
    sources = [(f"imagefolder:{trainish}", None), (f"imagefolder:{target}", None)]
    if order == "test_first":
        sources.reverse()
    sheet = build_medagg(BuildConfig(sources, tmp_path / "out", size=32))
    assert sheet["dropped_by_reason"]["exact duplicate"] == 1
    manifest = (tmp_path / "out" / "manifest.csv").read_text()
    assert "dup.png" not in manifest  # the training copy went…
    assert f"imagefolder:{target}#test/a/0.png" in manifest  # …the test copy stayed


def test_chain_refuses_held_out_images_seen_in_earlier_training_unless_allowed(tmp_path):
    target = _split_folder(tmp_path / "t", {"train": 6, "val": 2, "test": 2}, 300)
    pre = _split_folder(tmp_path / "r", {"train": 8, "val": 2}, 100)
    img = cv2.imread(str(target / "test" / "b" / "1.png"), cv2.IMREAD_GRAYSCALE)
    g.write_png(pre / "train" / "a" / "leak.png", np.clip(img.astype(int) + 3, 0, 255).astype(np.uint8))  # near
    agg = tmp_path / "medagg"
    build_medagg(BuildConfig([(f"imagefolder:{pre}", None)], agg, size=32))
    stages = f"scratch,medagg,imagefolder:{target}"
    roots = {"medagg": str(agg)}
    with pytest.raises(MedzooError, match=r"1 of its val/test images appear in earlier training data.*"
                                          r"test/b/1.png ~ medagg:.*leak.png.*--allow-overlap"):
        medzoo.train("resnet18", stages, overrides=TINY, precision="fp32", data_roots=roots)
    assert not store.checkpoints_dir().exists() or not any(store.checkpoints_dir().iterdir())  # nothing written
    cli = run_cli("train", "resnet18", "--stages", stages, "--data-root", f"medagg={agg}", check=False)
    assert cli.returncode == 1 and cli.stderr.strip().startswith("Error: stage 'imagefolder:")
    assert len(cli.stderr.strip().splitlines()) == 1
    results = medzoo.train("resnet18", stages, overrides=TINY, precision="fp32", data_roots=roots,
                           allow_overlap=True)
    lin = store.get_local(results[-1].name).lineage
    assert lin.stages[0].overlap is None
    overlap = lin.stages[-1].overlap
    assert overlap["allowed"] is True and overlap["pairs"] == 1 and "leak.png" in overlap["examples"][0]
    # the examples go into the lineage and the card: datasets and medagg origins by name, never a local path
    assert overlap["examples"][0].startswith("imagefolder:t:") and "(from imagefolder:r#train/a/leak.png)" in \
        overlap["examples"][0]
    from medzoo import cards

    ckpt_ = store.get_local(results[-1].name)
    for text in ((ckpt_.path / store.CONFIG).read_text(), cards.render(ckpt_, metrics={})):
        assert str(tmp_path) not in text and "leak.png" in text


def test_stale_temp_folders_of_dead_builds_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    home = cache_home()
    stale = home / f".head_ct-0123456789abcdef01234567.tmp-{dead.pid}-0a1b2c3d"
    live = home / f".head_ct-0123456789abcdef01234567.tmp-{os.getppid()}-0a1b2c3d"
    other = home / ".not-ours.tmp-1-zzzz"  # not medzoo's naming: never touched
    for d in (stale, live, other):
        (d / "images.npy").parent.mkdir(parents=True)
        (d / "images.npy").write_bytes(b"partial")
    open_dataset("head_ct", g.make_head_ct(tmp_path / "hct"), preprocess={"size": 16})
    assert not stale.exists() and live.exists() and other.exists()
    assert not [p for p in home.iterdir() if p.name.startswith(".head_ct") and p != live]
    # medagg builds beside --out: only that build's own dead temp folders go
    mine, theirs = tmp_path / f".agg.tmp-{dead.pid}-0a1b2c3d", tmp_path / f".other.tmp-{dead.pid}-0a1b2c3d"
    mine.mkdir(), theirs.mkdir()
    src = _folder(tmp_path / "src", ["a/0.png", "a/1.png", "b/0.png", "b/1.png"], 5)
    build_medagg(BuildConfig([(f"imagefolder:{src}", None)], tmp_path / "agg", size=16))
    assert not mine.exists() and theirs.exists()


def test_a_moved_data_folder_keeps_its_identity_and_its_trained_stage(tmp_path):
    first = _split_folder(tmp_path / "site_a" / "scans", {"train": 4, "val": 2}, 500)
    stages = ["scratch", f"imagefolder:{first}"]
    trained = medzoo.train("resnet18", stages, overrides=TINY, precision="fp32")[-1]
    moved = tmp_path / "archive" / "scans"
    moved.parent.mkdir()
    os.rename(first, moved)
    again = medzoo.train("resnet18", ["scratch", f"imagefolder:{moved}"], overrides=TINY, precision="fp32")[-1]
    assert again.name == trained.name and again.reused  # the content is what it was: nothing to retrain
    g.write_png(moved / "train" / "a" / "extra.png", g.pattern(999))  # the content still guards the data
    changed = medzoo.train("resnet18", ["scratch", f"imagefolder:{moved}"], overrides=TINY, precision="fp32")[-1]
    assert not changed.reused and changed.name != trained.name

import json

import datagen as g
import numpy as np
import pytest
from conftest import run_cli

from medzoo.data import open_dataset
from medzoo.registry import MedzooError
from medzoo_plugins.medagg_build import BuildConfig, HashIndex, build_medagg, waterfill


def _folder(root, counts, seed0=0, dup_of=None, blank=0, tiny=0):
    """imagefolder with counts per class; blanks and tiny images go into class b (read in full, under the
    cap), a near duplicate of dup_of/b/1.png into class x."""
    seed = seed0
    for cls, n in counts.items():
        for i in range(n):
            seed += 1
            g.write_png(root / cls / f"{i}.png", g.pattern(seed))
    for i in range(blank):
        g.write_png(root / "b" / f"blank{i}.png", np.full((40, 40), 7 + i, np.uint8))
    for i in range(tiny):
        g.write_png(root / "b" / f"tiny{i}.png", g.pattern(900 + i, (10, 10)))
    if dup_of is not None:  # a brighter copy of an image in the other folder: a near, not exact, duplicate
        src = dup_of / "b" / "1.png"
        import cv2
        img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
        g.write_png(root / "x" / "dup.png", np.clip(img.astype(int) + 3, 0, 255).astype(np.uint8))
    return root


def test_waterfill_and_hash_index():
    assert waterfill({"a": 100, "b": 10, "c": 50}, 40, None) == {"a": 40, "b": 10, "c": 40}
    assert waterfill({"a": 100, "b": 10, "c": 50}, None, 60) == {"a": 25, "b": 10, "c": 25}
    idx = HashIndex(4)
    idx.add(0b1011 << 40)
    assert idx.near((0b1011 << 40) ^ 0b1111) == 0  # 4 bits apart
    assert idx.near((0b1011 << 40) ^ 0b11111) is None  # 5 bits apart


def test_build_is_deterministic_balanced_and_filtered(tmp_path, monkeypatch):
    one = _folder(tmp_path / "one", {"a": 30, "b": 6}, blank=2, tiny=1)
    two = _folder(tmp_path / "two", {"x": 8, "y": 8}, seed0=500, dup_of=one)
    # an exact duplicate inside one source
    (one / "b" / "copy.png").write_bytes((one / "b" / "0.png").read_bytes())
    sources = [(f"imagefolder:{one}", None), (f"imagefolder:{two}", None)]
    cfg = dict(size=32, per_class_cap=12, min_per_class=10, seed=3)
    sheet = build_medagg(BuildConfig(sources, tmp_path / "out1", **cfg))
    build_medagg(BuildConfig(sources, tmp_path / "out2", **cfg))
    for f in ("manifest.csv", "manifest.json", "datasheet.json", "datasheet.md", "images.npy"):
        assert (tmp_path / "out1" / f).read_bytes() == (tmp_path / "out2" / f).read_bytes(), f
    assert (tmp_path / "out1" / "datasheet.png").stat().st_size > 1000
    reasons = sheet["dropped_by_reason"]
    assert reasons["blank"] == 2 and reasons["too small"] == 1
    assert reasons["exact duplicate"] == 1 and reasons["near duplicate"] == 1
    train = {k: v["train"] for k, v in sheet["by_class"].items()}
    assert train["one/a"] == 12  # capped (of ~24 training images)
    assert train["one/b"] == 10 and train["two/x"] == 10  # oversampled up to min_per_class
    assert sheet["licenses"]["one"]["dataset"].startswith("imagefolder:")
    ds = open_dataset("medagg", tmp_path / "out1")
    assert ds.classes == ["one/a", "one/b", "two/x", "two/y"]
    copies = [r for r in ds.records if r.meta["copy"]]
    assert copies and sheet["oversampled_copies"] == len(copies)
    orig = next(r for r in ds.records if r.meta["ref"] == copies[0].meta["ref"] and not r.meta["copy"])
    assert ds.read(orig).shape == (32, 32, 3) and not np.array_equal(ds.read(orig), ds.read(copies[0]))
    another = build_medagg(BuildConfig(sources, tmp_path / "out3", **{**cfg, "seed": 4}))
    assert another["images"] == sheet["images"]
    assert (tmp_path / "out3/manifest.csv").read_text() != (tmp_path / "out1/manifest.csv").read_text()


def test_coarse_labels_and_medmnist_sources(tmp_path, monkeypatch):
    g.make_medmnist(tmp_path / "mm", "breastmnist", 28)
    g.make_medmnist(tmp_path / "mm", "pathmnist", 28, channels=3, labels=3, seed=7)
    monkeypatch.setenv("MEDZOO_DATA_MEDMNIST", str(tmp_path / "mm"))
    sources = [("medmnist:breastmnist", None), ("medmnist:pathmnist", None)]
    sheet = build_medagg(BuildConfig(sources, tmp_path / "out", size=28, label="modality", hash_distance=-1))
    assert set(sheet["by_modality"]) == {"ultrasound", "histology"}
    ds = open_dataset("medagg", tmp_path / "out")
    assert ds.classes == ["histology", "ultrasound"]
    fine = open_dataset("medagg:fine", tmp_path / "out")
    assert "breastmnist/malignant" in fine.classes
    assert {r.split for r in ds.records} == {"train", "val", "test"}


def test_failed_build_keeps_the_old_one_and_skip_bad(tmp_path):
    one = _folder(tmp_path / "one", {"a": 6, "b": 6})
    out = tmp_path / "out"
    build_medagg(BuildConfig([(f"imagefolder:{one}", None)], out, size=16))
    before = (out / "manifest.csv").read_bytes()
    (one / "a" / "3.png").write_bytes(b"corrupt")
    with pytest.raises(MedzooError, match=r"3.png: not a readable image"):
        build_medagg(BuildConfig([(f"imagefolder:{one}", None)], out, size=16))
    assert (out / "manifest.csv").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    sheet = build_medagg(BuildConfig([(f"imagefolder:{one}", None)], out, size=16, skip_bad=True))
    assert sheet["dropped_by_reason"]["unreadable"] == 1 and "3.png" in sheet["skipped_bad_files"][0]
    assert "3.png" in (out / "datasheet.md").read_text()


def test_cli_build_and_errors(tmp_path):
    one = _folder(tmp_path / "one", {"a": 5, "b": 5})
    proc = run_cli("data", "build", "medagg", "--from", f"imagefolder:{one}", "--out", str(tmp_path / "o"),
                   "--size", "16")
    assert "medagg: 10 images" in proc.stdout
    info = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert info["classes"] == ["one/a", "one/b"]
    bad = run_cli("data", "build", "medagg", "--from", "chest_xary", "--out", str(tmp_path / "p"), check=False)
    assert bad.returncode == 1 and "unknown dataset 'chest_xary'; did you mean 'chest_xray" in bad.stderr
    (tmp_path / "notmine").mkdir()
    (tmp_path / "notmine" / "precious.txt").write_text("x")
    bad = run_cli("data", "build", "medagg", "--from", f"imagefolder:{one}", "--out", str(tmp_path / "notmine"),
                  check=False)
    assert bad.returncode == 1 and "is not a medagg build" in bad.stderr
    check = run_cli("data", "check", f"imagefolder:{one}")
    assert "10 images" in check.stdout and "train:" in check.stdout

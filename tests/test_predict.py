"""`medzoo predict` / `medzoo.predict` on new files, and `medzoo data export`."""

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import run_cli
from datagen import make_inbreast

import medzoo
from medzoo import store
from medzoo.evaluation import evaluate
from medzoo.registry import MedzooError


@pytest.fixture
def inbreast(tmp_path):
    """A checkpoint trained on INbreast in its release layout (DICOM) with the shipped recipe's preprocessing
    (breast_mask, flip_to:left, CLAHE 1.5, size 512, one channel): only epochs and image size overridden."""
    root = make_inbreast(tmp_path / "inb")
    name = medzoo.train("timm:test_resnet", "scratch,inbreast", overrides=["epochs=1", "image_size=32"],
                        precision="fp32", data_roots={"inbreast": str(root)})[-1].name
    return name, root / "INbreast Release 1.0" / "AllDICOMs"


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_on_dicoms_matches_evaluate(inbreast, tmp_path):
    name, dicoms = inbreast
    recipe = store.get_local(name).lineage.last.recipe["preprocess"]
    assert recipe["steps"] == ["breast_mask", "flip_to:left"] and recipe["clahe"] == 1.5
    result = evaluate(name, data_root={"inbreast": str(dicoms.parent.parent)}, bootstrap=0)
    expected = {r["id"]: r for r in read_rows(result.out_dir / "predictions.csv")}
    assert expected
    preds = medzoo.predict(name, [dicoms / i for i in expected])
    assert len(preds) == len(expected) and not preds.skipped
    for row in preds:
        want = expected[row["path"].rsplit("/", 1)[-1]]
        for c in ("benign", "malignant"):
            assert abs(row[f"p_{c}"] - float(want[f"p_{c}"])) < 2e-6
        assert row["predicted"] == ["benign", "malignant"][int(want["predicted"])]
    # evaluate stored a threshold chosen on the validation split: predict applies it in the decision column
    op = medzoo.load(name).medzoo_operating_point
    assert op is not None and op.split == "val"
    t = op.thresholds["malignant"]
    assert [r["decision"] for r in preds] == ["malignant" if r["p_malignant"] >= t else "benign" for r in preds]
    # a checkpoint written before steps existed recorded them as fields: read as the same steps
    ckpt = store.read_checkpoint(store.get_local(name).path)
    ckpt.lineage.stages[-1].recipe["preprocess"] = {"size": 512, "channels": 1, "breast_mask": True,
                                                    "flip_to": "left", "clahe": 1.5}
    store.write_config(ckpt.path, ckpt.config, ckpt.lineage)
    assert '"breast_mask": true' in (ckpt.path / store.CONFIG).read_text()
    assert medzoo.predict(name, [dicoms / i for i in expected]) == preds
    # a CSV of paths (relative to the CSV's folder) and a folder give the same rows, in the order given
    folder = tmp_path / "new"
    (folder / "sub").mkdir(parents=True)
    for i in expected:
        shutil.copy(dicoms / i, folder / "sub" / i)
    (folder / "list.csv").write_text("path\n" + "".join(f"sub/{i}\n" for i in sorted(expected)))
    out = tmp_path / "p.csv"
    run_cli("predict", name, str(folder / "list.csv"), "--out", str(out))
    by_csv = read_rows(out)
    assert [r["path"] for r in by_csv] == [str(folder / "sub" / i) for i in sorted(expected)]
    for r in by_csv:
        assert abs(float(r["p_malignant"]) - float(expected[r["path"].rsplit("/", 1)[-1]]["p_malignant"])) < 2e-6
    run_cli("predict", name, str(folder / "sub"), "--out", str(out))  # ours: replaced without --overwrite
    assert read_rows(out) == by_csv
    sidecar = json.loads((tmp_path / "p.csv.medzoo.json").read_text())
    assert sidecar["preprocess"]["steps"] == ["breast_mask", "flip_to:left"]
    assert sidecar["weights_sha256"] == store.get_local(name).lineage.weights_sha256
    assert sidecar["operating_point"]["thresholds"] == {"malignant": t}
    assert all(r["decision"] in ("benign", "malignant") for r in by_csv)


def test_bad_file_stops_or_is_skipped_and_nothing_is_half_written(inbreast, tmp_path):
    name, dicoms = inbreast
    good = sorted(dicoms.glob("*.dcm"))[:2]
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    out = tmp_path / "preds.csv"
    proc = run_cli("predict", name, *map(str, good), str(bad), "--out", str(out), check=False)
    assert proc.returncode == 1 and not out.exists()
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"Error: {bad}: ") and "--skip-bad" in lines[-1]
    proc = run_cli("predict", name, *map(str, good), str(bad), "--out", str(out), "--skip-bad")
    assert "broken.dcm" in proc.stderr and "1 skipped" in proc.stdout
    assert [r["path"] for r in read_rows(out)] == [str(p) for p in good]
    # a file medzoo did not write (or one edited since) is not replaced without --overwrite
    mine = tmp_path / "mine.csv"
    mine.write_text("my notes\n")
    proc = run_cli("predict", name, str(good[0]), "--out", str(mine), check=False)
    assert proc.returncode == 1 and "did not write it" in proc.stderr and mine.read_text() == "my notes\n"
    out.write_text(out.read_text() + "edited\n")
    assert run_cli("predict", name, str(good[0]), "--out", str(out), check=False).returncode == 1
    run_cli("predict", name, str(good[0]), "--out", str(mine), "--overwrite")
    assert len(read_rows(mine)) == 1
    with pytest.raises(MedzooError, match="no such file"):
        medzoo.predict(name, [tmp_path / "missing.png"])


def test_segmentation_masks_written_for_exported_images(tmp_path, monkeypatch):
    from datagen import make_bcss

    make_bcss(tmp_path / "bcss", slides=tuple(f"TCGA-A{i}-A0SK" for i in range(8)))
    monkeypatch.setenv("MEDZOO_DATA_BCSS", str(tmp_path / "bcss"))
    name = medzoo.train("unet_resnet18", "scratch,bcss:64", overrides=["epochs=1", "image_size=32"],
                        precision="fp32")[-1].name
    export = tmp_path / "export"
    run_cli("data", "export", "bcss:64", "--split", "test", "--limit", "3", "--out", str(export))
    labels = read_rows(export / "labels.csv")
    assert len(labels) == 3 and all((export / r["file"]).is_file() and (export / r["mask"]).is_file() for r in labels)
    # export refuses a folder that holds anything
    proc = run_cli("data", "export", "bcss:64", "--out", str(export), check=False)
    assert proc.returncode == 1 and "not an empty folder" in proc.stderr
    out = tmp_path / "seg.csv"
    run_cli("predict", name, str(export / "labels.csv"), "--out", str(out))
    rows = read_rows(out)
    assert [r["path"] for r in rows] == [str(export / r["file"]) for r in labels]
    assert len(rows) == 3 and list(rows[0]) == ["path", "mask", "mask_grid"]
    from PIL import Image

    last = store.get_local(name).lineage.last
    assert last.ignore_index == 0 and last.read_grey is False  # what the BCSS source read, in the lineage
    for r in rows:
        mask = np.asarray(Image.open(r["mask"]))
        image = np.asarray(Image.open(r["path"]))
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8 and r["mask_grid"] == "input"
        assert int(mask.max()) < len(last.classes)
        assert not (mask == 0).any(), "the ignored code 0 ('outside ROI') was predicted as a class"
    written = sorted(p.name for p in (tmp_path / "seg-masks").iterdir())
    assert written == sorted(r["mask"].rsplit("/", 1)[-1] for r in rows)
    # a non-square file (fit pad): its mask comes back on the file's own H×W grid
    wide = tmp_path / "wide.png"
    Image.fromarray(np.asarray(Image.open(rows[0]["path"]))[:40]).save(wide)
    # the Python API creates mask_dir, refuses to replace a mask there, and replaces it with overwrite=True
    masks = tmp_path / "py" / "masks"
    preds = medzoo.predict(name, [wide], mask_dir=masks)
    assert np.asarray(Image.open(preds[0]["mask"])).shape == (40, 64)
    assert sorted(p.name for p in masks.iterdir()) == ["00000-wide.png"]
    with pytest.raises(MedzooError, match="00000-wide.png exists.*--overwrite"):
        medzoo.predict(name, [wide], mask_dir=masks)
    assert len(medzoo.predict(name, [wide], mask_dir=masks, overwrite=True)) == 1
    # a bad file mid-run leaves nothing in the folder and no temporary folder beside it
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(MedzooError, match="broken.png"):
        medzoo.predict(name, [export / labels[1]["file"], bad], mask_dir=tmp_path / "py" / "other")
    assert not (tmp_path / "py" / "other").exists() and sorted(p.name for p in (tmp_path / "py").iterdir()) == ["masks"]
    # the CLI's sidecar name is never taken from a user's file
    notes = tmp_path / "n.csv"
    (tmp_path / "n.csv.medzoo.json").write_text('{"mine": 1}')
    proc = run_cli("predict", name, str(wide), "--out", str(notes), check=False)
    assert proc.returncode == 1 and "n.csv.medzoo.json exists" in proc.stderr and not notes.exists()
    assert (tmp_path / "n.csv.medzoo.json").read_text() == '{"mine": 1}'


def test_unfit_puts_a_mask_back_where_fit_took_it():
    """A mask fitted to the model's square (pad, crop, stretch) and put back lines up with the original grid."""
    from medzoo.cache import PreprocessConfig
    from medzoo.resize import fit_pair, unfit

    mask = np.zeros((90, 150), np.uint8)
    mask[20:50, 30:90] = 1
    mask[60:85, 100:140] = 2
    img = np.zeros((90, 150), np.uint8)
    for fit in ("pad", "crop", "stretch"):
        cfg = PreprocessConfig(size=60, fit=fit)
        _, small = fit_pair(img, mask, cfg, pad_mask=7)
        back = unfit(small, mask.shape, 60, fit, fill=7)
        assert back.shape == mask.shape
        seen = back != 7  # under crop, the margins the model never saw
        assert (back[seen] == mask[seen]).mean() > 0.97, fit
        assert seen.mean() > (0.55 if fit == "crop" else 0.999)


def test_export_writes_png_and_labels_that_predict_reads(tmp_path):
    from medzoo.data import open_dataset

    out = tmp_path / "x"
    run_cli("data", "export", "phantom_lesion", "--split", "test", "--limit", "4", "--out", str(out))
    rows = read_rows(out / "labels.csv")
    source = open_dataset("phantom_lesion")
    test = source.split("test")[:4]
    from PIL import Image

    assert [r["id"] for r in rows] == [r.id for r in test]
    assert [r["label"] for r in rows] == [source.classes[r.label] for r in test]
    assert np.array_equal(np.asarray(Image.open(out / rows[0]["file"])), source.read(test[0]))
    assert sorted(p.name for p in out.iterdir()) == ["images", "labels.csv"]


def test_saliency_maps_written_beside_predictions_and_nothing_replaced_or_half_written(inbreast, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    name, dicoms = inbreast
    good = sorted(dicoms.glob("*.dcm"))[:3]
    maps, out = tmp_path / "maps", tmp_path / "p.csv"
    proc = run_cli("predict", name, *map(str, good), "--out", str(out), "--saliency", str(maps))
    assert "saliency maps (gradcam)" in proc.stdout
    written = sorted(p.name for p in maps.iterdir())
    assert written == sorted(f"{p.stem}_saliency.png" for p in good)
    from PIL import Image

    assert np.asarray(Image.open(maps / written[0])).shape[2] == 3  # an RGB overlay over the model's input
    before = {p.name: p.read_bytes() for p in maps.iterdir()}
    # the same folder again: refused without --overwrite, and the maps and CSV stay as they were
    csv_before = out.read_bytes()
    proc = run_cli("predict", name, str(good[0]), "--out", str(out), "--saliency", str(maps), check=False)
    assert proc.returncode == 1 and "--overwrite" in proc.stderr.strip().splitlines()[-1]
    assert {p.name: p.read_bytes() for p in maps.iterdir()} == before and out.read_bytes() == csv_before
    # a bad file stops the run before any map reaches the folder
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    fresh = tmp_path / "fresh"
    proc = run_cli("predict", name, str(good[0]), str(bad), "--out", str(tmp_path / "q.csv"), "--saliency",
                   str(fresh), check=False)
    assert proc.returncode == 1 and not (fresh.exists() and any(fresh.iterdir()))
    # store.new_tmp_dir names it .tmp-<folder>-XXXX beside the folder
    assert not list(tmp_path.glob(".tmp-*")), "a temporary map folder was left behind"
    # two inputs whose maps would share a name are refused before anything runs
    twin = tmp_path / "twin"
    twin.mkdir()
    shutil.copy(good[0], twin / good[0].name)
    proc = run_cli("predict", name, str(good[0]), str(twin / good[0].name), "--out", str(tmp_path / "r.csv"),
                   "--saliency", str(tmp_path / "m2"), check=False)
    assert proc.returncode == 1 and "would both write" in proc.stderr


def _colour_folder(root, n=12, size=(40, 56)):
    """An imagefolder of RGB PNGs whose channels differ strongly (OpenCV's weighted grey is not their mean)."""
    import cv2

    rng = np.random.default_rng(0)
    for c, cls in enumerate(("a", "b")):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            img[..., c] //= 4
            assert cv2.imwrite(str(root / cls / f"p{i:02d}.png"), img)
    return root


def test_rgb_dataset_trained_grey_predicts_as_evaluate(tmp_path):
    """A colour dataset trained with preprocess channels: 1 read RGB, ran CLAHE on LAB lightness, then took the
    channel mean: predict must read it the same way (recorded in the lineage), not OpenCV's weighted grey."""
    data = _colour_folder(tmp_path / "rgb")
    name = medzoo.train("resnet18", f"scratch,imagefolder:{data}", precision="fp32",
                        overrides=["epochs=1", "image_size=32", "preprocess={size: 32, channels: 1, clahe: 2.0}"]
                        )[-1].name
    last = store.get_local(name).lineage.last
    assert last.read_grey is False and last.read_channels is None and last.recipe["preprocess"]["channels"] == 1
    result = evaluate(name, dataset=f"imagefolder:{data}", bootstrap=0)
    expected = read_rows(result.out_dir / "predictions.csv")
    assert expected
    files = [data / r["id"] if (data / r["id"]).is_file() else next(data.rglob(r["id"] + "*")) for r in expected]
    preds = medzoo.predict(name, files)
    for row, want in zip(preds, expected):
        assert abs(row["p_b"] - float(want["p_b"])) < 2e-6, (row["path"], want)
    # a checkpoint from before the read settings were recorded still loads, and predicts with the old guess
    ckpt = store.read_checkpoint(store.get_local(name).path)
    for key in ("read_grey", "read_channels"):
        setattr(ckpt.lineage.stages[-1], key, None)
    store.write_config(ckpt.path, ckpt.config, ckpt.lineage)
    assert "read_grey" not in (ckpt.path / store.CONFIG).read_text()
    assert len(medzoo.predict(name, files[:2])) == 2


def test_unexpected_reader_error_is_one_line_under_skip_bad(tmp_path, monkeypatch):
    data = _colour_folder(tmp_path / "rgb", n=4)
    name = medzoo.train("resnet18", f"scratch,imagefolder:{data}", precision="fp32",
                        overrides=["epochs=1", "image_size=32"])[-1].name
    from medzoo import inference

    files = sorted(data.rglob("*.png"))
    real = inference.FilesSource.read

    def odd(self, record):
        if record.meta["path"].endswith("p01.png"):
            raise ValueError("OpenCV(4.10) error: (-215:Assertion failed) scn == 3 || scn == 4")
        return real(self, record)

    monkeypatch.setattr(inference.FilesSource, "read", odd)
    with pytest.raises(MedzooError, match="p01.png.*ValueError: OpenCV"):
        medzoo.predict(name, files)
    preds = medzoo.predict(name, files, skip_bad=True)
    assert len(preds) == len(files) - 2 and all("ValueError" in s for s in preds.skipped)


def test_masks_follow_a_step_that_mirrors_the_image(tmp_path):
    """flip_to:left mirrors a right breast before the fit: the mask predicted on the mirrored input is mirrored
    back, so it lines up with the file."""
    import cv2
    import torch

    from medzoo.cache import PreprocessConfig
    from medzoo.inference import FilesSource, _mask_rows

    img = np.zeros((48, 64), np.uint8)
    img[:, 40:] = 200  # tissue on the right: the step mirrors it to the left
    path = tmp_path / "right.png"
    assert cv2.imwrite(str(path), img)
    cfg = PreprocessConfig.from_dict({"size": 32, "steps": ["flip_to:left"]})
    source = FilesSource([path], "segmentation", ["background", "tissue"], grey=True, channels=1)
    fitted, geo = source.prepare_tracked(source.records[0], cfg)
    assert fitted[:, :8].mean() > 100  # the model sees the tissue on the left
    assert geo.moved is not None and np.array_equal(geo.moved, np.arange(48 * 64).reshape(48, 64)[:, ::-1])
    logits = torch.zeros(1, 2, 32, 32)
    logits[0, 1] = torch.from_numpy(fitted > 100).float()  # a "model" that finds the tissue where it sees it
    rows = _mask_rows([(source.records[0], None, geo)], logits, cfg, None, tmp_path, tmp_path, start_index=0)
    mask = cv2.imread(rows[0]["mask"], cv2.IMREAD_UNCHANGED)
    assert mask.shape == img.shape and rows[0]["mask_grid"] == "input"
    assert (mask == (img > 100)).mean() > 0.97  # on the right, where the file has it

"""Data edge cases a new user meets: 16-bit files holding 12-bit values, one-class data and validation
splits, --data-root matching, bad files under data check, case-only label differences, undecodable DICOM,
evaluate --json."""

import json
import warnings

import cv2
import datagen as g
import numpy as np
import pytest
from conftest import run_cli

import medzoo
from medzoo import store
from medzoo.data import open_dataset
from medzoo.registry import MedzooError, MedzooWarning, registry
from medzoo_plugins.imaging import read_dicom, read_image

TINY = ["epochs=1", "image_size=32", "batch_size=32"]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_file_with_12bit_values_is_scaled_by_its_bit_depth(tmp_path, suffix):
    img = (g.pattern(3, (40, 40)).astype(np.uint16) * 16)  # 0..4080: a 12-bit detector's values
    path = tmp_path / f"a{suffix}"
    assert cv2.imwrite(str(path), img)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = read_image(path)
    assert out.dtype == np.uint16
    # scaled to the 16-bit range by 65535/4095, not left at 1/16 of it (which read as 0..16 of 255)
    assert np.allclose(out.astype(float), img.astype(float) * 65535 / 4095, atol=1)
    assert (out >> 8).max() >= 250
    assert any(issubclass(w.category, MedzooWarning) and "under 1/16 of the 16-bit range" in str(w.message)
               and "12-bit" in str(w.message) for w in caught)
    full = (g.pattern(3, (40, 40)).astype(np.uint16) * 257)  # real 16-bit data is left alone
    assert cv2.imwrite(str(path), full)
    assert np.array_equal(read_image(path), full)


def _folder(root, classes=("a", "b"), n=6, val=None):
    seed = 0
    for c in classes:
        for i in range(n):
            seed += 1
            g.write_png(root / ("train" if val else "") / c / f"{i}.png", g.pattern(seed + 100 * len(c)))
    for c in val or ():
        for i in range(3):
            g.write_png(root / "val" / c / f"v{i}.png", g.pattern(500 + i))
    return root


def test_one_class_dataset_is_refused_in_check_and_train(tmp_path):
    one = _folder(tmp_path / "one", classes=("normal",))
    env = {"MEDZOO_HOME": str(tmp_path / "home")}
    for args in (["data", "check", f"imagefolder:{one}"],
                 ["train", "resnet18", "--stages", f"scratch,imagefolder:{one}", "--set", "epochs=1"]):
        proc = run_cli(*args, env=env, check=False)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [
            f"Error: dataset 'imagefolder:{one}' has one class in its training images (only 'normal' of normal); "
            "a classifier needs at least two: add images of another class, or check the labels"]
    assert not (tmp_path / "home").exists() or not list((tmp_path / "home").rglob("*.safetensors"))


def test_one_class_validation_split_picks_the_best_epoch_by_loss(tmp_path, capsys):
    data = _folder(tmp_path / "d", val=("a",))
    results = medzoo.train("resnet18", f"scratch,imagefolder:{data}", overrides=TINY + ["epochs=2"],
                           precision="fp32")
    assert "the validation split has one class (a), where AUC is undefined" in capsys.readouterr().out
    best = store.get_local(results[0].name).lineage.stages[-1].best
    assert best["metric"] == "loss" and best["value"] == best["value"]  # a number, not NaN


def test_data_root_matches_stages_with_an_argument_on_the_base_name(tmp_path):
    g.make_medmnist(tmp_path / "medmnist", flag="pneumoniamnist")
    results = medzoo.train("resnet18", "scratch,medmnist:pneumoniamnist", overrides=TINY, precision="fp32",
                           data_roots={"medmnist": str(tmp_path / "medmnist")})
    assert results[0].dataset == "medmnist:pneumoniamnist"
    env = {"MEDZOO_HOME": str(tmp_path / "home")}
    ok = run_cli("data", "check", "medmnist:pneumoniamnist", "--data-root", f"medmnist={tmp_path / 'medmnist'}",
                 env=env)
    assert ok.stdout.startswith("medmnist:pneumoniamnist: 20 images")
    # a bare PATH means a folder holding one folder per dataset, in data check as in train
    ok = run_cli("data", "check", "medmnist:pneumoniamnist", "--data-root", str(tmp_path), env=env)
    assert "20 images" in ok.stdout
    bad = run_cli("data", "check", "medmnist:pneumoniamnist", "--data-root", str(tmp_path / "nowhere"),
                  env={**env, "MEDZOO_DATA": ""}, check=False)
    assert bad.stderr.startswith(f"Error: no data for 'medmnist': looked in {tmp_path / 'nowhere' / 'medmnist'} "
                                 "(--data-root)")
    assert "MEDZOO_DATA)" not in bad.stderr


def test_data_check_lists_and_counts_bad_files_in_one_line_errors(tmp_path):
    data = _folder(tmp_path / "f")
    (data / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nxxxxgarbage")
    (data / "b" / "trunc.png").write_bytes((data / "b" / "0.png").read_bytes()[:60])
    env = {"MEDZOO_HOME": str(tmp_path / "home")}
    proc = run_cli("data", "check", f"imagefolder:{data}", env=env, check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"Error: {data}/a/bad.png: not a readable image (corrupt, truncated or not "
                                        "an image file); re-download or remove it, or pass --skip-bad to leave it out"]
    proc = run_cli("data", "check", f"imagefolder:{data}", "--skip-bad", env=env)
    assert "2 unreadable image(s) of 14, left out with --skip-bad:" in proc.stdout
    assert f"{data}/a/bad.png: not a readable image" in proc.stdout and f"{data}/b/trunc.png" in proc.stdout
    train = run_cli("train", "resnet18", "--stages", f"scratch,imagefolder:{data}", "--set", "epochs=1",
                    "--set", "image_size=32", env=env, check=False)
    assert train.returncode == 1 and len(train.stderr.strip().splitlines()) == 1
    assert train.stderr.count("--skip-bad") == 1 and "[ERROR" not in train.stderr and "WARN" not in train.stderr


def test_labels_differing_only_by_case_warn(tmp_path):
    for i in range(6):
        g.write_png(tmp_path / f"{i}.png", g.pattern(i))
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(
        f"{i}.png,{label}\n" for i, label in enumerate(["a", "b", "A", "b", "a", "b"])))
    with pytest.warns(MedzooWarning, match=r"labels 'A', 'a' differ only by case or surrounding spaces and count "
                                           r"as 2 classes"):
        src = open_dataset(f"csv:{tmp_path / 'labels.csv'}")
    assert src.classes == ["A", "a", "b"]


def test_inbreast_corrects_the_imbalance_once():
    rec = registry().entries["datasets"]["inbreast"].recipe
    assert rec["class_weights"] is True and rec["balanced_sampling"] is False
    with pytest.raises(MedzooError, match="turns on both class_weights and balanced_sampling"):
        medzoo.train("resnet18", "scratch,inbreast", overrides=TINY + ["balanced_sampling=true"])


def test_12bit_jpeg_dicom_without_its_decoder_names_the_missing_package():
    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGExtended12Bit

    if not get_decoder(JPEGExtended12Bit).missing_dependencies:
        pytest.skip("pylibjpeg and GDCM are both installed: the file decodes")
    path = get_testdata_file("JPEG-lossy.dcm")
    with pytest.raises(MedzooError) as err:
        read_dicom(path)
    text = str(err.value)
    assert "compressed as 'JPEG Extended (Process 2 and 4)'" in text and "12-bit" in text
    assert "pylibjpeg" in text and "gdcm" in text and "corrupt" not in text


def test_evaluate_json_prints_pure_json(tmp_path):
    env = {"MEDZOO_HOME": str(tmp_path / "home")}
    run_cli("train", "resnet18", "--stages", "scratch,phantom_lesion", "--set", "epochs=1", "--set",
            "image_size=32", "--precision", "fp32", env=env)
    proc = run_cli("evaluate", "resnet18.scratch-phantom_lesion", "--json", "--bootstrap", "0", env=env)
    doc = json.loads(proc.stdout)
    assert doc["dataset"] == "phantom_lesion" and "auc" in doc["metrics"]
    assert "wrote" in proc.stderr

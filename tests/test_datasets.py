from collections import Counter

import datagen as g
import numpy as np
import pytest

from medzoo.data import check_leakage, open_dataset
from medzoo.registry import MedzooError


def _splits_by_patient(src):
    seen = {}
    for r in src.records:
        if r.patient:
            seen.setdefault(r.patient, set()).add(r.split)
    return seen


def test_inbreast_patient_from_file_name_and_birads_mapping(tmp_path):
    g.make_inbreast(tmp_path)
    src = open_dataset("inbreast", tmp_path)
    assert len(src.records) == 10 and src.classes == ["benign", "malignant"]
    by_id = {r.id.split("_")[0]: r for r in src.records}
    assert by_id["20586908"].patient == "6c613a14b80a8591"  # the sheet's Patient ID is 'removed'
    assert [by_id[f].label for f in ("20586908", "20586934", "22678622", "24055274", "53586922")] == [0, 1, 1, 0, 1]
    assert by_id["20586934"].meta["view"] == "MLO" and by_id["22678622"].meta["findings"] == ["Calcification", "Mass"]
    assert all(len(s) == 1 for s in _splits_by_patient(src).values())
    density = open_dataset("inbreast:density", tmp_path)
    assert len(density.records) == 9  # the blank ACR has no density label
    assert src.read(src.records[0]).dtype == np.uint16


def test_inbreast_reads_the_released_xls_like_the_csv(tmp_path):
    g.make_inbreast(tmp_path / "csv")
    g.make_inbreast(tmp_path / "xls", sheet="xls")
    assert not (tmp_path / "xls" / "INbreast Release 1.0" / "INbreast.csv").exists()
    from_csv, from_xls = open_dataset("inbreast", tmp_path / "csv"), open_dataset("inbreast", tmp_path / "xls")
    assert [(r.id, r.label, r.patient, r.split, r.meta["birads"]) for r in from_xls.records] == \
        [(r.id, r.label, r.patient, r.split, r.meta["birads"]) for r in from_csv.records]
    assert len(open_dataset("inbreast:density", tmp_path / "xls").records) == 9  # numeric ACR cells read as '1'…'4'
    g.make_inbreast(tmp_path / "bad", bad_birads="7", sheet="xls")
    with pytest.raises(MedzooError, match=r"INbreast.xls:2: unknown Bi-Rads value '7'"):
        open_dataset("inbreast", tmp_path / "bad")
    (tmp_path / "bad" / "INbreast Release 1.0" / "INbreast.xls").write_bytes(b"not a spreadsheet")
    with pytest.raises(MedzooError, match=r"INbreast.xls: cannot read the .xls sheet"):
        open_dataset("inbreast", tmp_path / "bad")


def test_inbreast_unknown_birads_names_the_row(tmp_path):
    g.make_inbreast(tmp_path, bad_birads="7")
    with pytest.raises(MedzooError, match=r"INbreast.csv:2: unknown Bi-Rads value '7'"):
        open_dataset("inbreast", tmp_path)
    assert len(open_dataset("inbreast", tmp_path, skip_bad=True).records) == 9


def test_cbis_maps_nbia_tree_groups_patients_and_tells_crop_from_mask(tmp_path):
    g.make_cbis(tmp_path)
    src = open_dataset("cbis_ddsm", tmp_path)
    ids = {r.id: r for r in src.records}
    assert len(src.records) == 9  # P_00001's image carries two abnormalities: one record, malignant
    assert ids["Mass-Training_P_00001_LEFT_CC"].label == 1
    # P_00005 is in the calc training set and the mass test set: all their images go to test
    assert {r.split for r in src.records if r.patient == "P_00005"} == {"test"}
    assert src.meta["moved_to_test"] == 1
    assert {r.split for r in src.records} >= {"train", "test"}
    roi = open_dataset("cbis_ddsm_roi", tmp_path)
    assert len(roi.records) == 10
    for r in roi.records:  # crop numbered first (mass) or second (calc): always the 30x26 crop, never the mask
        assert roi.read(r).shape == (30, 26)
    assert open_dataset("cbis_ddsm:calc", tmp_path).records[0].meta["kind"] == "calc"


def test_cbis_unknown_pathology_and_missing_image(tmp_path):
    g.make_cbis(tmp_path, bad_pathology=True)
    with pytest.raises(MedzooError,
                       match=r"mass_case_description_train_set.csv:\d+: unknown pathology 'BENIGN_OR_MAYBE'"):
        open_dataset("cbis_ddsm", tmp_path)
    import shutil
    shutil.rmtree(next((tmp_path / "CBIS-DDSM").glob("Calc-Test_P_00009_RIGHT_CC")))
    with pytest.raises(MedzooError, match=r"calc_case_description_test_set.csv:2: image .* is not in the DICOM tree"):
        open_dataset("cbis_ddsm:calc", tmp_path)


def test_bcss_tiles_codes_and_patient_split(tmp_path):
    g.make_bcss(tmp_path)
    src = open_dataset("bcss:32", tmp_path)
    assert src.task == "segmentation" and src.ignore_index == 0 and src.classes[1] == "tumor"
    # 96x80 regions -> 3 rows x 3 columns of 32-px tiles (the last column pulled back to x=48)
    assert {r.meta["x"] for r in src.records} == {0, 32, 48}
    r = src.records[0]
    img, mask = src.read(r), src.read_mask(r)
    assert img.shape == (32, 32, 3) and mask.shape == (32, 32) and mask.max() < len(g.BCSS_CODES)
    assert r.patient == r.id[:12] and all(len(s) == 1 for s in _splits_by_patient(src).values())


def test_chest_xray_ignores_junk_and_duplicates_and_splits_by_person(tmp_path):
    g.make_chest_xray(tmp_path)
    src = open_dataset("chest_xray", tmp_path)
    assert len(src.records) == 17  # no nested duplicate, no AppleDouble files
    assert not any("._" in r.id or r.id.startswith("chest_xray/") for r in src.records)
    patients = {r.id.rsplit("/", 1)[-1]: r.patient for r in src.records}
    assert patients["person1_virus_6.jpeg"] == "person1" and patients["IM-0115-0001.jpeg"] == "IM-0115"
    assert patients["NORMAL2-IM-1427-0001.jpeg"] == "NORMAL2-IM-1427"
    assert {r.split for r in src.records if r.patient == "person1"} == {"test"}  # was in train and test
    three = open_dataset("chest_xray:3class", tmp_path)
    assert Counter(three.classes[r.label] for r in three.records) == {"NORMAL": 8, "BACTERIA": 5, "VIRUS": 4}
    assert src.read(src.records[0]).ndim == 2  # RGB JPEGs of X-rays read as grey


def test_head_ct_header_padding_and_missing_file(tmp_path):
    g.make_head_ct(tmp_path, missing=5)
    with pytest.raises(MedzooError, match=r"labels.csv:7: references .*005.png, which does not exist"):
        open_dataset("head_ct", tmp_path)
    src = open_dataset("head_ct", tmp_path, skip_bad=True)
    assert len(src.records) == 19 and Counter(r.label for r in src.records) == {1: 9, 0: 10}
    assert any("005.png" in s for s in src.meta["skipped"])
    assert src.read(src.records[0]).ndim == 2  # RGBA PNG read as grey


def test_medmnist_npz_sizes_multilabel_and_errors(tmp_path):
    g.make_medmnist(tmp_path, "breastmnist", 28)
    g.make_medmnist(tmp_path, "pathmnist", 64, channels=3, labels=9)
    g.make_medmnist(tmp_path, "chestmnist", 28, multilabel=14)
    b = open_dataset("medmnist:breastmnist", tmp_path)
    assert b.classes == ["malignant", "normal, benign"]  # 0 = malignant in breastmnist
    assert Counter(r.split for r in b.records) == {"train": 12, "val": 4, "test": 4}
    assert b.read(b.records[0]).shape == (28, 28)
    p = open_dataset("medmnist:pathmnist", tmp_path)  # no size given: the largest present
    assert p.name == "medmnist:pathmnist_64" and p.read(p.records[-1]).shape == (64, 64, 3)
    assert p.meta["modality"] == "histology"
    c = open_dataset("medmnist:chestmnist", tmp_path)
    assert c.task == "multilabel" and len(c.records[0].label) == 14
    with pytest.raises(MedzooError, match="unknown MedMNIST flag 'pathmnsit'; did you mean 'pathmnist'"):
        open_dataset("medmnist:pathmnsit", tmp_path)
    with pytest.raises(MedzooError,
                       match=r"none of dermamnist_224.npz, .*dermamnist.npz in .*docs/datasets/medmnist.md"):
        open_dataset("medmnist:dermamnist", tmp_path)


def test_imagefolder_csv_and_dicom(tmp_path):
    for cls in ("a", "b"):
        for i in range(5):
            g.write_png(tmp_path / "f" / cls / f"{i}.png", g.pattern(i + (10 if cls == "b" else 0)))
    src = open_dataset(f"imagefolder:{tmp_path / 'f'}")
    assert src.classes == ["a", "b"] and len(src.records) == 10
    (tmp_path / "f" / "c").mkdir()
    with pytest.raises(MedzooError, match=r"class folder .*c has no images"):
        open_dataset(f"imagefolder:{tmp_path / 'f'}")

    rows = ["path,label,patient_id"] + [f"f/a/{i}.png,{'x' if i < 3 else 'y'},P{i % 2}" for i in range(5)]
    (tmp_path / "l.csv").write_text("\n".join(rows + ["f/a/9.png,x,P9"]) + "\n")
    with pytest.raises(MedzooError, match=r"l.csv:7: references .*9.png, which does not exist"):
        open_dataset(f"csv:{tmp_path / 'l.csv'}")
    src = open_dataset(f"csv:{tmp_path / 'l.csv'}", skip_bad=True)
    assert src.classes == ["x", "y"] and len(src.records) == 5
    assert all(len(s) == 1 for s in _splits_by_patient(src).values())

    d = tmp_path / "dcm"
    for i in range(6):
        g.write_dicom(d / f"im{i}.dcm", g.pattern(i, dtype=np.uint16), PatientID=f"PAT{i // 2}")
    (d / "labels.csv").write_text("path,label\n" + "".join(f"im{i}.dcm,{i % 2}\n" for i in range(6)))
    src = open_dataset(f"dicom:{d}")
    assert {r.patient for r in src.records} == {"PAT0", "PAT1", "PAT2"}
    check_leakage(src.records)
    assert src.read(src.records[0]).dtype == np.uint16


def test_planted_leak_in_a_csv_is_caught(tmp_path):
    for i in range(4):
        g.write_png(tmp_path / f"{i}.png", g.pattern(i))
    (tmp_path / "l.csv").write_text("path,label,patient_id,split\n0.png,a,P1,train\n1.png,b,P2,train\n"
                                     "2.png,a,P1,test\n3.png,b,P3,test\n")
    with pytest.raises(MedzooError, match="leakage.*P1"):
        open_dataset(f"csv:{tmp_path / 'l.csv'}")


def test_missing_data_points_to_the_docs(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDZOO_DATA", str(tmp_path))
    with pytest.raises(MedzooError, match=r"no data for 'inbreast'.*docs/datasets/inbreast.md"):
        open_dataset("inbreast")


def test_every_dataset_has_a_docs_page_and_a_full_recipe():
    from pathlib import Path

    import medzoo
    from medzoo_plugins.imaging import BASE_RECIPE
    root = Path(__file__).parent.parent
    for spec in medzoo.list_datasets():
        if spec.plugin not in {"mammography", "histology", "radiology", "medmnist", "generic", "medagg"}:
            continue
        page = root / spec.docs
        assert page.is_file(), spec.name
        text = page.read_text()
        for section in ("## Download", "## License", "## Layout", "## Task and labels", "## Splits"):
            assert section in text, (spec.name, section)
        assert set(BASE_RECIPE) <= set(spec.recipe) and "preprocess" in spec.recipe

"""The datasets medzoo cannot download for you (a licence form, a portal, a Kaggle account): the steps
``medzoo data download NAME`` prints, and what ``medzoo data check NAME`` reports missing from the layout each
reader expects. Kept beside the readers' own rules (mammography.py, histology.py, radiology.py): a change of
layout there changes the check here. ``missing(root=, arg=)`` gets ``root`` as ``open`` does (None: the
environment's data root) and names full paths."""

from __future__ import annotations

from pathlib import Path

from medzoo.plugin import data_root

from .imaging import find_dir

INBREAST = """\
1. INbreast is released by its authors (INESC TEC / Centro Hospitalar de S. Joao, Porto) under a data
   agreement: request it from them, citing Moreira et al., "INbreast: toward a full-field digital mammographic
   database", Academic Radiology 19(2), 2012, doi:10.1016/j.acra.2011.09.014. It cannot be redistributed.
2. Unpack the archive you receive; it holds the folder "INbreast Release 1.0":
     INbreast Release 1.0/AllDICOMs/<FileName>_<16-hex token>_MG_<R|L>_<CC|ML|FB>_ANON.dcm
     INbreast Release 1.0/AllXML/<FileName>.xml      (optional ROI annotations)
     INbreast Release 1.0/INbreast.csv  or  INbreast.xls
3. The data root is that folder or its parent."""

CBIS_DDSM = """\
1. Open the TCIA collection page https://www.cancerimagingarchive.net/collection/cbis-ddsm/
   (doi:10.7937/K9/TCIA.2016.7O02S9CY, CC BY 3.0) and download the image manifest (.tcia file) and the four
   case description CSVs: mass_case_description_train_set.csv, mass_case_description_test_set.csv,
   calc_case_description_train_set.csv, calc_case_description_test_set.csv.
2. Open the manifest with TCIA's NBIA Data Retriever (its installers are linked from the collection page;
   about 164 GB) and download into the data root, keeping its "Descriptive Directory Name" layout:
     <root>/CBIS-DDSM/<Subject>/<MM-DD-YYYY>-DDSM-NA-<5>/1.000000-<series description>-<5>/1-1.dcm
     <root>/CBIS-DDSM/metadata.csv   (written by the Retriever; used to map the CSVs' paths when present)
3. Put the four CSVs anywhere under the same root. cbis_ddsm and cbis_ddsm_roi read the same root
   (MEDZOO_DATA_CBIS_DDSM or $MEDZOO_DATA/cbis_ddsm)."""

BCSS = """\
1. BCSS (Amgad et al., Bioinformatics 2019; CC0 1.0): follow https://github.com/PathologyDataScience/BCSS -
   its download script fetches the regions from the Digital Slide Archive, or use the Google-Drive copy it
   links (folder 0_Public-data-Amgad2019_0.25MPP).
2. The data root must hold:
     images/<slide>_xmin<X>_ymin<Y>_MPP-0.2500.png   (the Drive copy: rgbs_colorNormalized/)
     masks/<same name>                                (8-bit class codes)
     meta/gtruth_codes.tsv
   or the folder 0_Public-data-Amgad2019_0.25MPP/ holding them."""

CHEST_XRAY = """\
1. Download the Kaggle dataset "Chest X-Ray Images (Pneumonia)" (Kermany et al., CC BY 4.0):
   https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia - in the browser (signed in) or with
   the Kaggle CLI: kaggle datasets download -d paultimothymooney/chest-xray-pneumonia
2. Unzip it into the data root; medzoo reads the first of <root>/ and <root>/chest_xray/ holding
     train/{NORMAL,PNEUMONIA}/*.jpeg   test/{NORMAL,PNEUMONIA}/*.jpeg   (val/ is optional)
   and ignores the zip's nested duplicate chest_xray/chest_xray/ and its __MACOSX/ tree."""

HEAD_CT = """\
1. Download the Kaggle dataset "Head CT - hemorrhage":
   https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage - in the browser (signed in) or with the
   Kaggle CLI: kaggle datasets download -d felipekitamura/head-ct-hemorrhage. The upload names no licence.
2. Unzip it into the data root:
     <root>/labels.csv               (header 'id, hemorrhage')
     <root>/head_ct/head_ct/000.png ... 199.png"""


def missing_inbreast(*, root: Path, arg=None) -> list[str]:
    base = find_dir(data_root("inbreast", root), "INbreast Release 1.0", "INbreast")
    out = []
    if not (base / "AllDICOMs").is_dir() or not any((base / "AllDICOMs").glob("*.dcm")):
        out.append(f"{base / 'AllDICOMs'}/*.dcm (the release's images)")
    if not (base / "INbreast.csv").is_file() and not (base / "INbreast.xls").is_file():
        out.append(f"{base / 'INbreast.csv'} or INbreast.xls (the BI-RADS and density sheet)")
    return out


CBIS_CSVS = {"mass": ("mass_case_description_train_set.csv", "mass_case_description_test_set.csv"),
             "calc": ("calc_case_description_train_set.csv", "calc_case_description_test_set.csv")}


def missing_cbis(*, root: Path, arg=None) -> list[str]:
    root = data_root("cbis_ddsm", root)
    names = [n for kind, pair in CBIS_CSVS.items() if arg in (None, kind) for n in pair]
    out = [f"{n} (anywhere under the root)" for n in names if next(root.rglob(n), None) is None]
    if next(root.rglob("*.dcm"), None) is None:
        out.append("the DICOM tree CBIS-DDSM/<Subject>/.../*.dcm (NBIA Data Retriever)")
    return out


def missing_bcss(*, root: Path, arg=None) -> list[str]:
    base = find_dir(data_root("bcss", root), "0_Public-data-Amgad2019_0.25MPP")
    out = []
    if not any((base / d).is_dir() for d in ("images", "rgbs_colorNormalized")):
        out.append(f"{base / 'images'}/ (or rgbs_colorNormalized/): the RGB regions")
    if not (base / "masks").is_dir():
        out.append(f"{base / 'masks'}/: the class-code masks")
    if not (base / "meta" / "gtruth_codes.tsv").is_file():
        out.append(f"{base / 'meta' / 'gtruth_codes.tsv'}: the class codes")
    return out


def missing_chest_xray(*, root: Path, arg=None) -> list[str]:
    root = data_root("chest_xray", root)
    base = next((d for d in (root, root / "chest_xray") if (d / "train").is_dir()), None)
    if base is None:
        return [f"{root / 'train'}/ or {root / 'chest_xray' / 'train'}/ (the unzipped Kaggle folder)"]
    return [f"{base / s / c}/*.jpeg" for s in ("train", "test") for c in ("NORMAL", "PNEUMONIA")
            if not (base / s / c).is_dir() or not any((base / s / c).glob("*.jpeg"))]


def missing_head_ct(*, root: Path, arg=None) -> list[str]:
    root = data_root("head_ct", root)
    labels = next((p for p in (root / "labels.csv", root / "head_ct" / "labels.csv") if p.is_file()), None)
    if labels is None:
        return [f"{root / 'labels.csv'} and {root / 'head_ct' / 'head_ct'}/*.png (the unzipped Kaggle folder)"]
    folders = (labels.parent / "head_ct" / "head_ct", labels.parent / "head_ct", labels.parent)
    if not any(d.is_dir() and any(d.glob("*.png")) for d in folders):
        return [f"{labels.parent / 'head_ct' / 'head_ct'}/*.png (the slices)"]
    return []

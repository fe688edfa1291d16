"""Mammography datasets: INbreast and CBIS-DDSM (full mammograms and ROI crops)."""

from __future__ import annotations

import plistlib
import re
from pathlib import Path

import numpy as np

from medzoo.plugin import (
    DatasetSpec,
    MedzooError,
    PreprocessStepSpec,
    Record,
    assign_splits,
    bad_input,
    data_root,
    did_you_mean,
    hookimpl,
    split_official,
)

from . import portals
from .imaging import (
    FileSource,
    breast_mask,
    canonical_side,
    dicom_header,
    find_dir,
    read_csv_rows,
    read_dicom,
    read_xls_rows,
    recipe,
)

MAMMO_PREPROCESS = {"size": 512, "channels": 1, "steps": ["breast_mask", "flip_to:left"], "clahe": 1.5}
MAMMO_RECIPE = recipe(epochs=30, batch_size=16, lr=1e-4, image_size=448, augment="medium", class_weights=True,
                      patience=10, preprocess=MAMMO_PREPROCESS)
BENIGN_MALIGNANT = ("benign", "malignant")

# -- INbreast --------------------------------------------------------------------------------------

INBREAST_TASKS = {
    # BI-RADS 1-3 (negative, benign, probably benign) vs 4-6 (suspicious, highly suggestive, proven malignant)
    "binary": (BENIGN_MALIGNANT, {"1": 0, "2": 0, "3": 0, "4a": 1, "4b": 1, "4c": 1, "5": 1, "6": 1}),
    "birads": (("1", "2", "3", "4", "5", "6"),
               {"1": 0, "2": 1, "3": 2, "4a": 3, "4b": 3, "4c": 3, "5": 4, "6": 5}),
}
_INBREAST_NAME = re.compile(r"^(\d+)_([0-9a-fA-F]+)_MG_([RL])_([A-Z]+)_ANON$")


def open_inbreast(*, root=None, arg=None) -> FileSource:
    task = arg or "binary"
    if task not in INBREAST_TASKS and task != "density":
        raise MedzooError(f"inbreast label mapping '{task}' is unknown"
                          f"{did_you_mean(task, [*INBREAST_TASKS, 'density'])}; "
                          "use inbreast (benign BI-RADS 1-3 vs malignant 4-6), inbreast:birads or inbreast:density")
    top = data_root("inbreast", root)
    base = find_dir(top, "INbreast Release 1.0", "INbreast")
    dicoms = base / "AllDICOMs"
    if not dicoms.is_dir():
        raise MedzooError(f"inbreast: no AllDICOMs/ folder in {base}; see docs/datasets/inbreast.md")
    sheet = base / "INbreast.csv"
    if sheet.is_file():
        table = read_csv_rows(sheet, delimiter=";")  # ';' and CRLF, as released
    elif (base / "INbreast.xls").is_file():
        sheet = base / "INbreast.xls"
        table = read_xls_rows(sheet)
    else:
        raise MedzooError(f"inbreast: neither INbreast.csv nor INbreast.xls in {base}; the release ships them "
                          "beside AllDICOMs/ (see docs/datasets/inbreast.md)")
    rows = {r.get("File Name", "").split(".")[0]: (i, r) for i, r in enumerate(table, start=2)}
    findings = _inbreast_findings(base / "AllXML")
    if task == "density":
        classes, mapping = ("A", "B", "C", "D"), {"1": 0, "2": 1, "3": 2, "4": 3}
    else:
        classes, mapping = INBREAST_TASKS[task]
    records = []
    for p in sorted(dicoms.glob("*.dcm")):
        m = _INBREAST_NAME.match(p.stem)
        if not m:
            continue  # not an image of the release (e.g. a copied file)
        file_id, patient, side, view = m.groups()
        if file_id not in rows:
            bad_input(p, f"has no row with File Name {file_id} in {sheet.name}")
            continue
        line, row = rows[file_id]
        value = (row.get("ACR") if task == "density" else row.get("Bi-Rads", "")).strip().lower()
        if task == "density" and not value:
            continue  # one image of the release has a blank ACR: no density label to learn from
        if value not in mapping:
            bad_input(f"{sheet}:{line}", f"unknown {'ACR' if task == 'density' else 'Bi-Rads'} value {value!r} "
                      f"(known: {', '.join(mapping)})")
            continue
        # Patient ID in the sheet is the literal 'removed': the patient is the file name's hex token.
        records.append(Record(p.name, mapping[value], "train", patient, meta={
            "path": p.relative_to(base).as_posix(), "laterality": side,
            "view": {"ML": "MLO"}.get(view, view), "birads": row.get("Bi-Rads", ""),
            "findings": findings.get(file_id, [])}))
    assign_splits(records, (0.7, 0.15, 0.15), seed=0)
    return FileSource("inbreast", "classification", classes, records, root=base, grey=True)


def _inbreast_findings(folder: Path) -> dict[str, list[str]]:
    """ROI names (Mass, Calcification, Cluster, ...) per image from the OsiriX plists in AllXML/."""
    out: dict[str, list[str]] = {}
    if not folder.is_dir():
        return out
    for xml in sorted(folder.glob("*.xml")):
        try:
            plist = plistlib.loads(xml.read_bytes())
        except Exception as exc:
            bad_input(xml, f"not a readable OsiriX ROI plist ({type(exc).__name__})")
            continue
        names = [roi.get("Name", "") for image in plist.get("Images", []) for roi in image.get("ROIs", [])]
        out[xml.stem] = sorted(set(filter(None, names)))
    return out


# -- CBIS-DDSM -------------------------------------------------------------------------------------

CBIS_CSVS = {("mass", "train"): "mass_case_description_train_set.csv",
             ("mass", "test"): "mass_case_description_test_set.csv",
             ("calc", "train"): "calc_case_description_train_set.csv",
             ("calc", "test"): "calc_case_description_test_set.csv"}
PATHOLOGY = {"MALIGNANT": 1, "BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0}


class DicomIndex:
    """Finds the DICOM files of a CBIS-DDSM series. The CSVs name ``<Subject>/<StudyUID>/<SeriesUID>/x.dcm``
    but NBIA downloads as ``<Subject>/<date>-DDSM-[NA-]<last 5 of StudyUID>/<n>-<description>-<last 5 of
    SeriesUID>/1-1.dcm``: match on subject and UID suffixes, or on NBIA's metadata.csv when present."""

    def __init__(self, top: Path):
        self.by_series: dict[str, list[Path]] = {}
        self.by_subject: dict[str, list[tuple[str, str, list[Path]]]] = {}
        meta = next(iter(sorted(top.rglob("metadata.csv"))), None) if top.is_dir() else None
        if meta is not None:
            for row in read_csv_rows(meta):
                uid, loc = row.get("Series UID"), row.get("File Location", "").replace("\\", "/")
                folder = (meta.parent / loc).resolve() if loc else None
                if uid and folder and folder.is_dir():
                    self.by_series[uid] = sorted(folder.glob("*.dcm"))
        for series in sorted({p.parent for p in top.rglob("*.dcm")}):
            study = series.parent
            subject = next((a.name for a in study.parents if a.name[:5] in ("Mass-", "Calc-")), None)
            if subject is None:
                continue
            files = sorted(series.glob("*.dcm"))
            self.by_subject.setdefault(subject, []).append((study.name, series.name, files))

    def files(self, csv_path: str) -> list[Path]:
        parts = csv_path.strip().replace("\\", "/").split("/")
        if len(parts) < 3:
            return []
        subject, study_uid, series_uid = parts[0], parts[1], parts[2]
        if series_uid in self.by_series:
            return self.by_series[series_uid]
        out = []
        for study, series, files in self.by_subject.get(subject, []):
            if study_uid.endswith(study.rsplit("-", 1)[-1]) and series_uid.endswith(series.rsplit("-", 1)[-1]):
                out += files
        return out


class CbisSource(FileSource):
    """Full mammograms (one record per image, malignant if any of its abnormalities is), or ROI crops
    (one record per abnormality)."""

    def __init__(self, *args, roi: bool, **kw):
        super().__init__(*args, **kw)
        self.roi = roi
        self._crop: dict[str, Path] = {}

    def path(self, record: Record) -> Path:
        if not self.roi:
            return record.meta["files"][0]
        if record.id not in self._crop:
            self._crop[record.id] = self._find_crop(record)
        return self._crop[record.id]

    def files(self, record: Record):
        return record.meta["files"] + record.meta.get("roi_files", [])

    def read(self, record: Record) -> np.ndarray:
        return read_dicom(self.path(record))

    def _find_crop(self, record: Record) -> Path:
        # Crop and mask file numbering differs between mass and calc rows, and some rows name both
        # 000000.dcm in different folders: tell them apart by content. The mask has the full image's size.
        def size(p: Path) -> tuple[int, int]:
            h = dicom_header(p)
            return int(h.Rows), int(h.Columns)

        full_size = size(record.meta["files"][0])
        candidates = record.meta["roi_files"]
        crops = [p for p in candidates if size(p) != full_size]
        if not crops:  # a crop as large as the image: the mask is the one holding only 0 and 255
            crops = [p for p in candidates if not set(np.unique(read_dicom(p)).tolist()) <= {0, 65535}]
        if not crops:
            raise MedzooError(f"{record.meta['files'][0]}: no ROI crop among {', '.join(map(str, candidates))} "
                              "(all look like masks); check the download of this series")
        return crops[0]


def open_cbis(*, root=None, arg=None, roi: bool = False) -> CbisSource:
    if arg not in (None, "mass", "calc"):
        raise MedzooError(f"cbis_ddsm takes ':mass' or ':calc' (one abnormality type) or nothing, not ':{arg}'")
    top = data_root("cbis_ddsm", root)
    index = DicomIndex(top)
    records: dict[str, Record] = {}
    found = 0
    for (kind, split), name in CBIS_CSVS.items():
        if arg and kind != arg:
            continue
        sheet = next(iter(sorted(top.rglob(name))), None)
        if sheet is None:
            continue
        found += 1
        for line, row in enumerate(read_csv_rows(sheet), start=2):
            row = {k.lower().replace(" ", "_"): v for k, v in row.items()}  # 'breast density' vs 'breast_density'
            pathology = row.get("pathology", "")
            if pathology not in PATHOLOGY:
                bad_input(f"{sheet}:{line}", f"unknown pathology {pathology!r} (known: {', '.join(PATHOLOGY)})")
                continue
            image = row.get("image_file_path", "")
            files = index.files(image)
            if not files:
                bad_input(f"{sheet}:{line}", f"image {image!r} is not in the DICOM tree under {top}",
                          "check the download (NBIA), or pass --skip-bad")
                continue
            patient = row.get("patient_id", "")
            meta = {"files": files, "path": str(files[0]), "kind": kind, "official_split": split,
                    "laterality": row.get("left_or_right_breast", "")[:1], "view": row.get("image_view", ""),
                    "density": row.get("breast_density", ""), "assessment": row.get("assessment", "")}
            label = PATHOLOGY[pathology]
            if roi:
                roi_files = index.files(row.get("cropped_image_file_path", "")) + \
                    index.files(row.get("roi_mask_file_path", ""))
                roi_files = sorted(set(roi_files))
                if not roi_files:
                    bad_input(f"{sheet}:{line}", "its cropped image and ROI mask are not in the DICOM tree",
                              "check the download (NBIA), or pass --skip-bad")
                    continue
                rid = f"{image.split('/')[0]}#{row.get('abnormality_id', line)}"
                records[rid] = Record(rid, label, split, patient, meta={**meta, "roi_files": roi_files})
            elif image.split("/")[0] in records:  # another abnormality on the same image
                r = records[image.split("/")[0]]
                r.label = max(r.label, label)
            else:
                rid = image.split("/")[0]
                records[rid] = Record(rid, label, split, patient, meta=meta)
    if not found:
        raise MedzooError(f"cbis_ddsm: none of the case description CSVs ({', '.join(CBIS_CSVS.values())}) is under "
                          f"{top}; see docs/datasets/cbis_ddsm.md")
    rows = list(records.values())
    # One patient can be in a calc training set and a mass test set: group by patient across both.
    moved = split_official(rows, val_fraction=0.15, seed=0)
    name = "cbis_ddsm_roi" if roi else "cbis_ddsm"
    return CbisSource(name, "classification", BENIGN_MALIGNANT, rows, root=top, grey=True, roi=roi,
                      meta={"moved_to_test": moved})


INBREAST_CITATION = ("Moreira et al., INbreast: toward a full-field digital mammographic database, Academic "
                     "Radiology 2012.")
CBIS_CITATION = ("Lee et al., A curated mammography data set for use in computer-aided detection and diagnosis "
                 "research, Scientific Data 2017.")


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        name="inbreast", open=open_inbreast, classes=BENIGN_MALIGNANT, modality="mammography", body_part="breast",
        license="other", docs="docs/datasets/inbreast.md",  # research use under the INbreast data agreement
        citation=INBREAST_CITATION,
        description="INbreast full-field digital mammograms (410 images): benign (BI-RADS 1-3) vs malignant "
                    "(4-6); ':birads' for 6 BI-RADS classes, ':density' for ACR density",
        takes_arg=True, arg_required=False, arg_help="binary|birads|density",
        manual_steps=portals.INBREAST, missing=portals.missing_inbreast,
        # the imbalance is corrected once, by class-weighted loss (MAMMO_RECIPE): with ~100 malignant of 410,
        # balanced sampling would instead show each of them ~twice per epoch and overfit them sooner
        recipe={**MAMMO_RECIPE, "epochs": 40, "freeze": "top:2"}))
    register(DatasetSpec(
        name="cbis_ddsm", open=lambda *, root=None, arg=None: open_cbis(root=root, arg=arg),
        classes=BENIGN_MALIGNANT, modality="mammography", body_part="breast", license="cc-by-3.0",
        license_url="https://www.cancerimagingarchive.net/collection/cbis-ddsm/",
        docs="docs/datasets/cbis_ddsm.md", citation=CBIS_CITATION,
        description="CBIS-DDSM full mammograms, benign vs malignant (official train/test kept); ':mass' or ':calc'",
        takes_arg=True, arg_required=False, arg_help="mass|calc", recipe=MAMMO_RECIPE,
        manual_steps=portals.CBIS_DDSM, missing=portals.missing_cbis))
    register(DatasetSpec(
        name="cbis_ddsm_roi", open=lambda *, root=None, arg=None: open_cbis(root=root, arg=arg, roi=True),
        classes=BENIGN_MALIGNANT, modality="mammography", body_part="breast", license="cc-by-3.0",
        license_url="https://www.cancerimagingarchive.net/collection/cbis-ddsm/",
        docs="docs/datasets/cbis_ddsm.md", citation=CBIS_CITATION,
        description="CBIS-DDSM ROI crops, one per abnormality, benign vs malignant; ':mass' or ':calc'",
        takes_arg=True, arg_required=False, arg_help="mass|calc",
        manual_steps=portals.CBIS_DDSM, missing=portals.missing_cbis,
        recipe=recipe(epochs=30, batch_size=32, lr=1e-4, augment="strong", class_weights=True,
                      preprocess={"size": 256, "channels": 1, "clahe": 1.5})))


# -- preprocessing steps ---------------------------------------------------------------------------

@hookimpl
def register_preprocess_steps(register):
    # registered in the order they ran when they were PreprocessConfig fields: old configs map in this order
    register(PreprocessStepSpec(
        name="breast_mask", apply=lambda img, mask, arg: (breast_mask(img), mask), legacy_field="breast_mask",
        description="mammograms: keep the largest bright component (the breast); burnt-in labels, markers and "
                    "scanner text go"))
    register(PreprocessStepSpec(
        name="flip_to", apply=lambda img, mask, arg: canonical_side(img, arg, mask), takes_arg=True,
        legacy_field="flip_to",
        arg_help="left|right", choices={"left": "breasts face the left edge", "right": "breasts face the right edge"},
        description="mammograms: mirror the image (and mask) so the breast lies on one side"))

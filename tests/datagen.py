"""Tiny fixtures in each dataset's exact on-disk layout, quirks included (see docs/datasets/*.md)."""

from __future__ import annotations

import plistlib
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def pattern(seed: int, shape=(48, 40), channels: int = 0, dtype=np.uint8) -> np.ndarray:
    """A smooth random image (distinct perceptual hash per seed)."""
    rng = np.random.default_rng(seed)
    small = rng.random((6, 5, channels) if channels else (6, 5)).astype(np.float32)
    img = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 1)
    top = 65535 if dtype == np.uint16 else 255
    return (img * top).astype(dtype)


def write_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), img)
    return path


def write_dicom(path: Path, pixels: np.ndarray, *, implicit: bool = False, **tags) -> Path:
    """A real DICOM file (16-bit grey unless told otherwise) with the tags given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def mammogram(side: str = "L", shape=(120, 96), seed: int = 0, marker: bool = True) -> np.ndarray:
    """A dark field with a bright half-disc breast against one edge and a bright label in a corner."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    cx = 0 if side == "L" else w - 1
    breast = ((yy - h / 2) / (h * 0.45)) ** 2 + ((xx - cx) / (w * 0.55)) ** 2 <= 1
    img = np.where(breast, 30000 + rng.integers(0, 8000, size=shape), 200).astype(np.uint16)
    if marker:  # a burnt-in laterality label on the far side
        x0 = w - 14 if side == "L" else 4
        img[4:12, x0:x0 + 10] = 60000
    return img


# -- INbreast ----------------------------------------------------------------------------------------

INBREAST_ROWS = [  # (file id, patient token, side, view, birads, acr)
    ("20586908", "6c613a14b80a8591", "R", "CC", "2", "1"),
    ("20586934", "6c613a14b80a8591", "L", "ML", "4a", "1"),
    ("22678622", "61b13c59bcba149e", "R", "CC", "5", "2"),
    ("22678646", "61b13c59bcba149e", "R", "ML", "6", "2"),
    ("24055274", "3b1e3ab6e3f7e7a5", "L", "CC", "1", "3"),
    ("24055298", "3b1e3ab6e3f7e7a5", "L", "FB", "3", "   "),  # the one blank ACR and the one FB view
    ("50994408", "a7b2c93d11ee0f42", "R", "CC", "4c", "4"),
    ("50994432", "a7b2c93d11ee0f42", "L", "ML", "2", "4"),
    ("53586896", "0e14ad03a2f4c3e1", "L", "CC", "3", "2"),
    ("53586922", "0e14ad03a2f4c3e1", "R", "ML", "4b", "2"),
]


def make_inbreast(root: Path, rows=INBREAST_ROWS, bad_birads: str | None = None, sheet: str = "csv") -> Path:
    """The release's layout; ``sheet="xls"`` writes the metadata as the Excel 97 INbreast.xls instead."""
    base = root / "INbreast Release 1.0"
    table = [["Patient ID", "Patient age", "Laterality", "View", "Acquisition date", "File Name", "ACR", "Bi-Rads"]]
    for i, (fid, token, side, view, birads, acr) in enumerate(rows):
        # Real headers lack PatientID and view; the sheet says MLO where the file name says ML.
        write_dicom(base / "AllDICOMs" / f"{fid}_{token}_MG_{side}_{view}_ANON.dcm", mammogram(side, seed=i),
                    WindowCenter=20000, WindowWidth=40000)
        value = bad_birads if (bad_birads and i == 0) else birads
        table.append(["removed", "removed", side, "MLO" if view == "ML" else view, "201001", fid, acr, value])
    if sheet == "xls":
        import xlwt

        book = xlwt.Workbook()
        ws = book.add_sheet("Sheet1")
        for r, row in enumerate(table):
            for c, v in enumerate(row):
                # Excel stores ids, dates and plain BI-RADS digits as numbers, '4a' and blanks as text
                ws.write(r, c, float(v) if r and v.strip().isdigit() else v)
        book.save(str(base / "INbreast.xls"))
    else:
        (base / "INbreast.csv").write_bytes(("\r\n".join(";".join(r) for r in table) + "\r\n").encode())
    roi = {"Images": [{"ImageIndex": 0, "NumberOfROIs": 2, "ROIs": [
        {"Name": "Mass", "Area": 1.0, "Center": "(1, 2, 0)", "Point_px": ["(10, 12)", "(14, 18)"]},
        {"Name": "Calcification", "Area": 0.1, "Center": "(3, 4, 0)", "Point_px": ["(30, 40)"]}]}]}
    (base / "AllXML").mkdir(parents=True, exist_ok=True)
    (base / "AllXML" / f"{rows[2][0]}.xml").write_bytes(plistlib.dumps(roi))
    return root


# -- CBIS-DDSM ---------------------------------------------------------------------------------------

MASS_HEADER = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
               "mass shape,mass margins,assessment,pathology,subtlety,image file path,cropped image file path,"
               "ROI mask file path")
CALC_HEADER = ("patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,"
               "calc type,calc distribution,assessment,pathology,subtlety,image file path,cropped image file path,"
               "ROI mask file path")


def _nbia_series(root: Path, subject: str, study_uid: str, series_uid: str, description: str,
                 images: list[np.ndarray]) -> None:
    """The tree NBIA writes: <Subject>/<date>-DDSM-NA-<5>/1.000000-<description>-<5>/1-N.dcm."""
    folder = root / "CBIS-DDSM" / subject / f"07-20-2016-DDSM-NA-{study_uid[-5:]}" / \
        f"1.000000-{description}-{series_uid[-5:]}"
    for i, px in enumerate(images, start=1):
        # Implicit VR LE, side in Laterality, view in PatientOrientation, as the real files carry them
        write_dicom(folder / f"1-{i}.dcm", px, implicit=True, Laterality=subject.split("_")[3][0],
                    PatientOrientation=subject.split("_")[4], PatientID=subject)


def make_cbis(root: Path, bad_pathology: bool = False) -> Path:
    """Two mass and two calc rows per split; P_00005 is in the calc training set and the mass test set."""
    cases = [  # (kind, split, patient, side, view, pathology, abnormality id)
        ("mass", "Training", "P_00001", "LEFT", "CC", "MALIGNANT", 1),
        ("mass", "Training", "P_00001", "LEFT", "CC", "BENIGN", 2),  # a second abnormality on the same image
        ("mass", "Training", "P_00004", "RIGHT", "MLO", "BENIGN", 1),
        ("mass", "Test", "P_00005", "LEFT", "MLO", "MALIGNANT", 1),
        ("calc", "Training", "P_00005", "RIGHT", "CC", "BENIGN_WITHOUT_CALLBACK", 1),
        ("calc", "Training", "P_00007", "LEFT", "CC", "MALIGNANT", 1),
        ("calc", "Training", "P_00008", "LEFT", "MLO", "BENIGN", 1),
        ("calc", "Test", "P_00009", "RIGHT", "CC", "BENIGN", 1),
        ("mass", "Training", "P_00010", "RIGHT", "CC", "BENIGN", 1),
        ("mass", "Training", "P_00011", "LEFT", "MLO", "MALIGNANT", 1),
    ]
    rows: dict[tuple[str, str], list[str]] = {}
    made = set()
    for i, (kind, split, patient, side, view, pathology, ab) in enumerate(cases):
        subject = f"{kind.capitalize()}-{split}_{patient}_{side}_{view}"
        study, series = generate_uid("1.3.6.1.4.1.9590.100.1.2."), generate_uid("1.3.6.1.4.1.9590.100.1.2.")
        if subject not in made:
            made.add(subject)
            rows.setdefault(("full", subject), [study, series])
            _nbia_series(root, subject, study, series, "full mammogram images", [mammogram(side[0], seed=i)])
        study, series = rows[("full", subject)]
        roi_subject, roi_study, roi_series = f"{subject}_{ab}", generate_uid(), generate_uid()
        crop = mammogram(side[0], shape=(30, 26), seed=100 + i, marker=False)
        mask = np.zeros((120, 96), np.uint8)
        mask[40:70, 10:36] = 255
        # the ROI series holds the crop and the mask, numbered in either order: content tells them apart
        _nbia_series(root, roi_subject, roi_study, roi_series, "ROI mask images",
                     [mask, crop] if kind == "calc" else [crop, mask])
        full_path = f"{subject}/{study}/{series}/000000.dcm"
        roi_path = f"{roi_subject}/{roi_study}/{roi_series}/"
        path = "BENIGN_OR_MAYBE" if bad_pathology and i == 2 else pathology
        fields = [patient, "3", side, view, str(ab), kind, "IRREGULAR", "SPICULATED", "4", path, "4", full_path,
                  roi_path + ("000001.dcm" if kind == "calc" else "000000.dcm"),
                  roi_path + ("000000.dcm" if kind == "calc" else "000001.dcm")]
        # one quoted path per row ends with a bare LF (mass: ROI mask path; calc: cropped image path)
        k = 13 if kind == "mass" else 12
        fields[k] = f'"{fields[k]}\n"'
        rows.setdefault((kind, "train" if split == "Training" else "test"), []).append(",".join(fields))
    for (kind, split), lines in rows.items():
        if kind == "full":
            continue
        header = MASS_HEADER if kind == "mass" else CALC_HEADER
        (root / f"{kind}_case_description_{split}_set.csv").write_bytes(
            ("\r\n".join([header, *lines]) + "\r\n").encode())
    return root


# -- BCSS, chest X-ray, head CT, MedMNIST --------------------------------------------------------------

BCSS_CODES = ["outside_roi", "tumor", "stroma", "lymphocytic_infiltrate", "necrosis_or_debris"]


def make_bcss(root: Path, slides=("TCGA-A1-A0SK", "TCGA-A2-A0CM", "TCGA-AR-A1AQ", "TCGA-BH-A18V"),
              shape=(96, 80)) -> Path:
    rng = np.random.default_rng(0)
    lines = ["label\tGT_code"] + [f"{name}\t{code}" for code, name in enumerate(BCSS_CODES)]
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "gtruth_codes.tsv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    for i, slide in enumerate(slides):
        for region in range(2):
            name = f"{slide}-DX1_xmin{1000 * region}_ymin{500 * i}_MPP-0.2500.png"
            write_png(root / "images" / name, pattern(10 * i + region, shape, 3))
            mask = rng.integers(1, len(BCSS_CODES), size=shape).astype(np.uint8)
            mask[:, :20] = 0  # outside the annotated ROI
            write_png(root / "masks" / name, mask)
    return root


def make_chest_xray(root: Path) -> Path:
    names = {
        ("train", "NORMAL"): ["IM-0115-0001.jpeg", "IM-0117-0001.jpeg", "NORMAL2-IM-1427-0001.jpeg",
                              "IM-0119-0001.jpeg", "IM-0122-0001.jpeg"],
        ("train", "PNEUMONIA"): ["person1_bacteria_1.jpeg", "person1_virus_6.jpeg", "person3_bacteria_10.jpeg",
                                 "person5_virus_12.jpeg", "person7_bacteria_29.jpeg", "person8_virus_27.jpeg"],
        ("val", "NORMAL"): ["NORMAL2-IM-1430-0001.jpeg"],
        ("val", "PNEUMONIA"): ["person1946_bacteria_4874.jpeg"],
        ("test", "NORMAL"): ["IM-0001-0001.jpeg", "IM-0003-0001.jpeg"],
        ("test", "PNEUMONIA"): ["person100_bacteria_475.jpeg", "person1_virus_7.jpeg"],  # person1 is in train too
    }
    seed = 0
    for (split, cls), files in names.items():
        for n in files:
            seed += 1
            img = pattern(seed, (40 + seed % 7, 44), 3 if seed % 3 == 0 else 0)  # grey and RGB JPEGs, varying sizes
            for top in ("chest_xray", "chest_xray/chest_xray"):  # the zip's nested duplicate
                write_png(root / top / split / cls / n, img)
            junk = root / "__MACOSX" / "chest_xray" / split / cls / f"._{n}"
            junk.parent.mkdir(parents=True, exist_ok=True)
            junk.write_bytes(b"\x00\x05\x16\x07AppleDouble junk")
            (root / "chest_xray" / split / cls / f"._{n}").write_bytes(b"\x00\x05\x16\x07")
    return root


def make_head_ct(root: Path, n: int = 20, missing: int | None = None) -> Path:
    lines = ["id, hemorrhage"]  # the real header: a space before 'hemorrhage'
    for i in range(n):
        lines.append(f"{i},{1 if i < n // 2 else 0}")
        if i == missing:
            continue
        shape = (50 + i % 5, 44 + i % 3)
        img = pattern(i, shape, 4 if i % 4 == 0 else 3)  # RGB PNGs, some RGBA
        write_png(root / "head_ct" / "head_ct" / f"{i:03d}.png", img)
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def make_medmnist(root: Path, flag: str = "breastmnist", size: int | None = 28, n=(12, 4, 4), channels=0,
                  labels=2, multilabel=0, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    s = size or 28
    for split, k in zip(("train", "val", "test"), n):
        offset = seed * 1000 + {"train": 0, "val": 300, "test": 600}[split]
        arrays[f"{split}_images"] = np.stack([pattern(offset + j, (s, s), channels) for j in range(k)])
        arrays[f"{split}_labels"] = (rng.integers(0, 2, size=(k, multilabel)) if multilabel
                                     else (np.arange(k) % labels).reshape(k, 1)).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    path = root / (f"{flag}_{size}.npz" if size and size != 28 else f"{flag}.npz")
    np.savez_compressed(path, **arrays)
    return path

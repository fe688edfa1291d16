"""Reading and preprocessing medical images, shared by medzoo's dataset plugins: DICOM (rescale, VOI LUT or
window, MONOCHROME1, 16-bit until the end, clear decoder and corruption errors), image files through
OpenCV, CLAHE, mammogram artifact masking and canonical side, and ``FileSource``, the base of the
file-backed datasets.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medzoo.plugin import RECIPE_DEFAULTS as RECIPE_KEYS
from medzoo.plugin import (
    DataSource,
    MedzooError,
    MedzooWarning,
    PreprocessStepSpec,
    ReaderSpec,
    Record,
    hookimpl,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
SKIP_BAD = "re-download or remove it, or pass --skip-bad to leave it out"


# -- DICOM -----------------------------------------------------------------------------------------

def is_dicom(path: str | Path) -> bool:
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    if path.suffix:
        return False
    try:  # DICOM files often have no suffix (NBIA, DICOMDIR trees): look for the 'DICM' magic
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def dicom_header(path: str | Path):
    """The DICOM header without pixel data (fast)."""
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise MedzooError(f"{path}: not a readable DICOM file ({_first_line(exc)}); {SKIP_BAD}") from None


def read_dicom(path: str | Path, *, window: tuple[float, float] | None = None, frame: int | None = None) -> np.ndarray:
    """DICOM pixels for display: modality rescale (slope/intercept or LUT), then the VOI LUT, else
    ``window`` (center, width), else the file's window, else its full range; MONOCHROME1 inverted so
    bright is dense everywhere. Grey images come back as uint16 (no depth lost before the final
    resize), colour ones as uint8 RGB."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise MedzooError(f"{path}: not a DICOM file ({_first_line(exc)}); {SKIP_BAD}") from None
    except Exception as exc:
        raise MedzooError(f"{path}: corrupt DICOM header ({type(exc).__name__}: {_first_line(exc)}); "
                          f"{SKIP_BAD}") from None
    if "PixelData" not in ds:
        raise MedzooError(f"{path}: DICOM file has no pixel data (a report or structured document?); {SKIP_BAD}")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise MedzooError(f"{path}: pixel data is compressed as '{syntax.name}', which pydicom cannot decode; "
                              "convert the file (e.g. with dcmdjpeg/gdcmconv)") from None
        if not decoder.is_available:
            need = "; ".join(decoder.missing_dependencies)
            raise MedzooError(f"{path}: pixel data is compressed as '{syntax.name}' and no installed package can "
                              f"decode it; install one of: {need} (e.g. pip install pylibjpeg pylibjpeg-libjpeg "
                              "pylibjpeg-openjpeg, or pip install python-gdcm)")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        if syntax is not None and syntax.is_compressed:
            _undecodable(path, syntax, exc)
        raise MedzooError(f"{path}: corrupt or truncated DICOM pixel data ({_first_line(exc)}); {SKIP_BAD}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[frames // 2 if frame is None else frame]
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # pydicom has converted YBR to RGB
        bits = int(ds.get("BitsStored", 8))
        return arr.astype(np.uint8) if bits <= 8 else (arr.astype(np.float32) / (2 ** bits - 1) * 255).astype(np.uint8)
    x = apply_modality_lut(arr, ds)
    if window is not None:
        y = _window(x, *window)
    elif "VOILUTSequence" in ds or ds.get("VOILUTFunction", "LINEAR") not in ("LINEAR", "", None):
        y = _minmax(apply_voi_lut(x, ds, prefer_lut=True))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        y = _window(x, _first(ds.WindowCenter), _first(ds.WindowWidth))
    else:
        y = _minmax(x)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        y = 1.0 - y
    return (y * 65535 + 0.5).astype(np.uint16)


def _undecodable(path, syntax, exc: Exception) -> None:
    """An installed decoder failed and another package could decode this syntax (12-bit JPEG needs
    pylibjpeg-libjpeg or GDCM; Pillow reads 8-bit only): name the missing package, not corruption."""
    from pydicom.pixels import get_decoder

    missing = get_decoder(syntax).missing_dependencies
    if not missing:
        return
    why = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    raise MedzooError(f"{path}: pixel data is compressed as '{syntax.name}', which the installed decoder could not "
                      f"decode ({why[0] if why else _first_line(exc)}); install one of: {'; '.join(missing)} "
                      "(e.g. pip install pylibjpeg pylibjpeg-libjpeg, or pip install python-gdcm)") from None


def _window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    # DICOM PS3.3 C.11.2.1.2.1 linear window, in numpy: ~7x faster than pydicom's apply_voi_lut on a
    # full-field mammogram, which matters when a cache build reads thousands of them.
    width = max(float(width), 2.0)
    y = (x.astype(np.float32) - (float(center) - 0.5)) / (width - 1) + 0.5
    return np.clip(y, 0.0, 1.0, out=y)


def _minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _first(value) -> float:
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# -- image files -----------------------------------------------------------------------------------

def _cv2():
    import cv2

    # OpenCV prints its own [ WARN]/[ERROR] lines for a corrupt file before medzoo's one-line error
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


BIT_DEPTHS = (8, 10, 12, 14, 16)
_LOW_RANGE_WARNED: set[tuple[str, int]] = set()


def scale_16bit(img: np.ndarray, path: str | Path = "") -> np.ndarray:
    """A 16-bit image file stretched from its bit depth to the full 16-bit range.

    Detectors write 10-, 12- or 14-bit values into 16-bit PNG/TIFF files; read as 16-bit they come out
    nearly black (a 12-bit image uses 0..4095 of 0..65535). The depth is the smallest of 8/10/12/14/16 bits
    that holds the image's largest value, so images of one detector are scaled alike; an image that uses
    under 1/16 of the 16-bit range (largest value below 4096) is reported once per folder and depth."""
    if img.dtype != np.uint16 or img.size == 0:
        return img
    top = int(img.max())
    bits = next(b for b in BIT_DEPTHS if top < (1 << b))
    if bits == 16:
        return img
    if bits <= 12:
        key = (str(Path(path).parent), bits)
        if key not in _LOW_RANGE_WARNED:
            _LOW_RANGE_WARNED.add(key)
            warnings.warn(f"{path}: a 16-bit image whose values stop at {top} (under 1/16 of the 16-bit range); "
                          f"read as {bits}-bit data and scaled to the full range (docs/datasets/README.md)",
                          MedzooWarning, stacklevel=2)
    scaled = img.astype(np.float32) * (65535.0 / ((1 << bits) - 1)) + 0.5
    return np.minimum(scaled, 65535).astype(np.uint16)


def read_image(path: str | Path, *, grey: bool = False) -> np.ndarray:
    """Any supported image file as H×W or H×W×3 RGB (uint8 or uint16; alpha dropped); ``grey`` converts
    colour to one channel (X-ray and CT saved as RGB PNG/JPEG). 16-bit files holding fewer bits are
    scaled by their bit depth (:func:`scale_16bit`)."""
    cv2 = _cv2()
    path = Path(path)
    if is_dicom(path):
        img = read_dicom(path)
    else:
        try:
            buf = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            raise MedzooError(f"{path}: cannot read the file ({exc.strerror}); {SKIP_BAD}") from None
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
        if img is None:
            raise MedzooError(f"{path}: not a readable image (corrupt, truncated or not an image file); {SKIP_BAD}")
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
        img = scale_16bit(img, path)
    if grey and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return img


def image_names(folder: str | Path) -> list[str]:
    """Names of the image files directly in ``folder``, sorted; AppleDouble ``._*`` and hidden files are not
    images. Strings from one directory scan (no stat per file, no pathlib): opening a 10k-image dataset
    then costs less than identifying its content (docs/benchmarks.md, figure 8)."""
    names = []
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.startswith(".") or not e.is_file():
                continue
            suffix = os.path.splitext(e.name)[1].lower()
            if suffix in IMAGE_SUFFIXES or (not suffix and is_dicom(e.path)):
                names.append(e.name)
    return sorted(names)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` as paths, sorted (see ``image_names``)."""
    return [folder / n for n in image_names(folder)]


def read_csv_rows(path: Path, *, delimiter: str = ",") -> list[dict[str, str]]:
    """Rows with stripped keys and values: real CSVs carry header names with stray spaces and values
    with stray line feeds inside quotes."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedzooError(f"{path}: cannot read the CSV ({exc}); check the file") from None
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]


def read_xls_rows(path: Path) -> list[dict[str, str]]:
    """The first sheet of a legacy Excel (.xls) file as rows like ``read_csv_rows``'s (xlrd reads .xls).

    Numeric cells come back as floats: a whole number is written without its '.0' (file ids, codes)."""
    import xlrd

    try:
        sheet = xlrd.open_workbook(str(path), on_demand=True).sheet_by_index(0)
    except (OSError, xlrd.XLRDError, xlrd.compdoc.CompDocError, ValueError, IndexError) as exc:
        raise MedzooError(f"{path}: cannot read the .xls sheet ({type(exc).__name__}: {exc}); check the file, "
                          "or save its first sheet as CSV") from None

    def text(cell) -> str:
        v = cell.value
        if isinstance(v, float):
            return str(int(v)) if v.is_integer() else repr(v)
        return str(v).strip()

    if sheet.nrows == 0:
        return []
    header = [text(c) for c in sheet.row(0)]
    return [dict(zip(header, (text(c) for c in sheet.row(i)))) for i in range(1, sheet.nrows)]


# -- preprocessing steps ---------------------------------------------------------------------------

def to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def clahe(img: np.ndarray, clip: float, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation with OpenCV (uint8 or uint16 kept; colour images
    equalised on their lightness only)."""
    cv2 = _cv2()

    if img.dtype not in (np.uint8, np.uint16):
        img = (np.clip(img, 0, 1) * 65535 + 0.5).astype(np.uint16)
    op = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(tiles, tiles))
    if img.ndim == 2:
        return op.apply(np.ascontiguousarray(img))
    lab = cv2.cvtColor(to_uint8(img), cv2.COLOR_RGB2LAB)
    lab[..., 0] = op.apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def breast_mask(img: np.ndarray) -> np.ndarray:
    """Keep only the largest bright connected component (the breast): burnt-in labels, markers and
    scanner text are separate components and go."""
    import cv2

    grey = to_uint8(img if img.ndim == 2 else img.mean(2).astype(img.dtype))
    h, w = grey.shape
    scale = 512 / max(h, w)
    small = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) \
        if scale < 1 else grey
    _, binary = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return img
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    keep = (labels == largest).astype(np.uint8)
    keep = cv2.morphologyEx(keep, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))  # fill speckle holes in fat
    if keep.shape != (h, w):
        keep = cv2.resize(keep, (w, h), interpolation=cv2.INTER_NEAREST)
    return img * (keep if img.ndim == 2 else keep[..., None]).astype(img.dtype)


def facing(img: np.ndarray) -> str:
    """Which side of the image the breast (the brighter half) lies on: 'left' or 'right'."""
    grey = img if img.ndim == 2 else img.mean(2)
    cols = grey.astype(np.float64).sum(0)
    half = len(cols) // 2
    return "left" if cols[:half].sum() >= cols[len(cols) - half:].sum() else "right"


def canonical_side(img: np.ndarray, side: str, mask: np.ndarray | None = None):
    """Mirror the image (and mask) so the breast lies on ``side``: a model then never has to learn both."""
    if facing(img) == side:
        return img, mask
    return np.ascontiguousarray(img[:, ::-1]), (None if mask is None else np.ascontiguousarray(mask[:, ::-1]))


def _clahe_step(img, mask, arg):
    return clahe(img, float(arg)), mask


def _check_clip(arg: str | None) -> None:
    try:
        ok = float(arg or "") > 0
    except ValueError:
        ok = False
    if not ok:
        raise MedzooError(f"preprocess step 'clahe:{arg}' needs a positive clip limit, e.g. clahe:1.5")


@hookimpl
def register_preprocess_steps(register):
    register(PreprocessStepSpec(
        name="clahe", apply=_clahe_step, takes_arg=True, arg_help="clip limit", check=_check_clip,
        description="contrast-limited adaptive histogram equalisation (OpenCV, 8x8 tiles); the preprocess "
                    "option clahe: CLIP runs it after the other steps"))


@hookimpl
def register_readers(register):
    register(ReaderSpec(
        name="image", read=read_image, suffixes=tuple(s for s in IMAGE_SUFFIXES if s not in (".dcm", ".dicom")),
        description="PNG, JPEG, BMP, TIFF through OpenCV (16-bit kept, scaled by its bit depth)"))
    register(ReaderSpec(
        name="dicom", read=read_image, suffixes=(".dcm", ".dicom"), sniff=is_dicom,
        description="DICOM: modality rescale, VOI LUT or window, MONOCHROME1 inverted (pydicom)"))


# -- file-backed sources ---------------------------------------------------------------------------

class FileSource(DataSource):
    """Records whose ``meta['path']`` is a file under ``root``; ``grey`` reads colour files as one channel."""

    preprocess_version = 1  # bump when read() changes what it produces

    def __init__(self, name, task, classes, records, *, root: Path, grey: bool = False, **kw):
        super().__init__(name, task, classes, records, **kw)
        self.root = Path(root)
        self._root = os.fspath(self.root)
        self.grey = grey
        self.meta.setdefault("channels", 1 if grey else None)

    def path(self, record: Record) -> Path:
        return self.root / record.meta["path"]

    def read(self, record: Record) -> np.ndarray:
        return read_image(self.path(record), grey=self.grey)

    def files(self, record: Record) -> Sequence[str | Path]:
        """The files the core hashes for this record's identity (subclasses add masks, ROI files).
        A plain string join: pathlib would cost more than the stat of an unchanged file."""
        return record.files or [os.path.join(self._root, record.meta["path"])]


def find_dir(root: Path, *candidates: str) -> Path:
    """The first of ``root/candidate`` that exists (the same release is unpacked under different names)."""
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    return root


# -- recipes ----------------------------------------------------------------------------------------

BASE_RECIPE = dict(epochs=30, batch_size=32, optimizer="adamw", lr=3e-4, weight_decay=0.05, schedule="cosine",
                   warmup_epochs=2, image_size=224, augment="light", loss="auto", class_weights=False,
                   balanced_sampling=False, patience=8, freeze="auto", seed=0)


def recipe(**overrides) -> dict:
    """A dataset's default training recipe: the shared defaults with its own choices on top; the
    ``preprocess`` entry is the PreprocessConfig for ``open_dataset(..., preprocess=True)``."""
    unknown = set(overrides) - set(RECIPE_KEYS)
    if unknown:  # a typo here would silently fall back to a default in the trainer
        raise ValueError(f"unknown recipe keys {sorted(unknown)}")
    return {**BASE_RECIPE, **overrides}

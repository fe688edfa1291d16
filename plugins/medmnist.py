"""MedMNIST / MedMNIST+ 2D datasets, read straight from their ``<flag>[_<size>].npz`` files.

The npz is unpacked once into ``.npy`` files under ``$MEDZOO_HOME/cache/medmnist`` so images are memory-mapped
(a 224-px npz can hold tens of GB; ``np.load`` of an npz member reads it all into memory).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np

from medzoo.plugin import (
    ArraySource,
    DatasetSpec,
    MedzooError,
    Record,
    cache_home,
    clean_stale_tmp,
    data_root,
    did_you_mean,
    download_file,
    hookimpl,
    license_id,
    swap_dir,
    tmp_folder,
    url_of,
)

from .imaging import recipe
from .medmnist_release import BASE, MD5

# what a release npz holds: train_images.npy, train_labels.npy, val_…, test_…
MEMBER = re.compile(r"[a-z0-9_]+\.npy")
MD5_FILE = "npz.md5"  # in the unpacked folder: the npz's md5, for the release check

# flag -> (task, modality, body part, licence id, labels). The labels are those of the medmnist package's INFO
# (3.0); INFO itself is used when the package is installed.
_NC = "cc-by-nc-4.0"
_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
           "lung-right", "pancreas", "spleen")
FLAGS: dict[str, tuple[str, str, str, str, tuple[str, ...]]] = {
    "pathmnist": ("classification", "histology", "colon", "cc-by-4.0", (
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
        "cancer-associated stroma", "colorectal adenocarcinoma epithelium")),
    "chestmnist": ("multilabel", "X-ray", "chest", "cc-by-4.0", (
        "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia", "pneumothorax",
        "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia")),
    "dermamnist": ("classification", "dermatoscopy", "skin", _NC, (
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma", "benign keratosis-like lesions",
        "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions")),
    "octmnist": ("classification", "OCT", "retina", "cc-by-4.0", (
        "choroidal neovascularization", "diabetic macular edema", "drusen", "normal")),
    "pneumoniamnist": ("classification", "X-ray", "chest", "cc-by-4.0", ("normal", "pneumonia")),
    "retinamnist": ("classification", "fundus photography", "retina", "cc-by-4.0", ("0", "1", "2", "3", "4")),
    "breastmnist": ("classification", "ultrasound", "breast", "cc-by-4.0", ("malignant", "normal, benign")),
    "bloodmnist": ("classification", "microscopy", "blood", "cc-by-4.0", (
        "basophil", "eosinophil", "erythroblast",
        "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte", "monocyte",
        "neutrophil", "platelet")),
    "tissuemnist": ("classification", "microscopy", "kidney", "cc-by-4.0", (
        "Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule", "Glomerular endothelial cells",
        "Interstitial endothelial cells", "Leukocytes", "Podocytes", "Proximal Tubule Segments",
        "Thick Ascending Limb")),
    "organamnist": ("classification", "CT", "abdomen", "cc-by-4.0", _ORGANS),
    "organcmnist": ("classification", "CT", "abdomen", "cc-by-4.0", _ORGANS),
    "organsmnist": ("classification", "CT", "abdomen", "cc-by-4.0", _ORGANS),
}
SIZES = (28, 64, 128, 224)


def flag_info(flag: str) -> tuple[str, str, str, str, tuple[str, ...]]:
    task, modality, body, license_, labels = FLAGS[flag]
    try:
        from medmnist import (
            INFO,  # the package's metadata wins when it is installed (newer releases)
        )

        info = INFO[flag]
        labels = tuple(info["label"][str(i)] for i in range(len(info["label"])))
        license_ = license_id(info.get("license") or license_)
    except (ImportError, KeyError):
        pass
    return task, modality, body, license_, labels


def _parse(arg: str | None) -> tuple[str, int | None]:
    if not arg:
        raise MedzooError(f"medmnist needs a flag: medmnist:<flag>[_<size>], flags: {', '.join(FLAGS)}")
    flag, _, size = arg.lower().partition("_")
    if flag not in FLAGS:
        extra = " (3D flags are not 2D images)" if flag.endswith("3d") else ""
        raise MedzooError(f"unknown MedMNIST flag '{flag}'{did_you_mean(flag, list(FLAGS))}{extra}; "
                          f"2D flags: {', '.join(FLAGS)}")
    if size and (not size.isdigit() or int(size) not in SIZES):
        raise MedzooError(f"MedMNIST size '{size}' is not one of {', '.join(map(str, SIZES))}")
    return flag, int(size) if size else None


def find_npz(folder: Path, flag: str, size: int | None) -> Path:
    """``<flag>.npz`` is the 28-px release, ``<flag>_<size>.npz`` MedMNIST+; no size: the largest present."""
    names = [f"{flag}_{size}.npz"] if size and size != 28 else [f"{flag}.npz", f"{flag}_28.npz"] if size \
        else [f"{flag}_{s}.npz" for s in reversed(SIZES)] + [f"{flag}.npz"]
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise MedzooError(f"medmnist: none of {', '.join(names)} in {folder}; `medzoo data download "
                      f"medmnist:{flag}{f'_{size}' if size else ''}` fetches it (docs/datasets/medmnist.md)")


def unpack_npz(npz: Path) -> Path:
    """The npz's arrays as .npy files (written once, atomically, keyed by the npz's content digest, so a
    changed npz is unpacked again even under a restored size and mtime once ``data check --verify`` saw it)."""
    from medzoo.plugin import file_digests

    key = hashlib.sha256(file_digests([npz])[str(npz)].encode()).hexdigest()[:16]
    out = cache_home() / "medmnist" / f"{npz.stem}-{key}"
    if (out / "done").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out.parent)
    tmp = tmp_folder(out)
    tmp.mkdir()
    try:
        try:
            zf = zipfile.ZipFile(npz)
        except (zipfile.BadZipFile, OSError) as exc:
            raise MedzooError(f"{npz}: not a readable npz ({exc}); re-download it") from None
        with zf:
            # a name is a path: '../x' or '/x' would write outside the cache, and a user-placed npz (or one in
            # ~/.medmnist) was never md5-checked, so only the plain array names a release holds are unpacked
            for member in zf.namelist():
                if not MEMBER.fullmatch(member):
                    raise MedzooError(f"{npz}: refusing its member {member!r}: a MedMNIST npz holds only plain "
                                      f"<split>_<images|labels>.npy arrays; delete it and re-download it")
            for member in zf.namelist():
                with zf.open(member) as src, open(tmp / member, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)  # streamed: never the whole array in memory
        (tmp / MD5_FILE).write_text(_md5(npz))
        (tmp / "done").touch()
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MedzooError(f"{npz}: truncated or corrupt npz ({exc}); re-download it") from None
    try:
        swap_dir(tmp, out)  # a lost race with another process is its own MedzooError, not a corrupt npz
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def release_mismatch(npz: Path, arrays: Path, flag: str) -> str | None:
    """One line when ``npz`` is not the published release file of its name (a user-placed or ~/.medmnist
    copy is never checked at download); None when it is. The md5 is computed once per content, at unpacking."""
    stem_size = npz.stem.partition("_")[2]
    size = int(stem_size) if stem_size.isdigit() else 28
    expected = MD5.get(flag, {}).get(size)
    if expected is None:
        return None
    kept = arrays / MD5_FILE
    if kept.is_file():
        got = kept.read_text().strip()
    else:  # unpacked before the md5 was kept
        got = _md5(npz)
        try:
            kept.write_text(got)
        except OSError:
            pass
    if got == expected:
        return None
    return (f"{npz}: md5 {got} is not the published {expected} of {npz.name}, so it is not the MedMNIST release "
            f"file (medzoo still reads it, identified by its content); `medzoo data download "
            f"medmnist:{npz.stem}` fetches the release into $MEDZOO_DATA/medmnist")


def release_file(flag: str, size: int | None) -> tuple[str, str, str]:
    """(file name, URL, published md5) of a release file. ``MEDZOO_MEDMNIST_URL`` replaces the Zenodo record
    with a mirror that holds the same files under the same names; the md5 is always the published one."""
    size = size or 28
    name = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    mirror = os.environ.get("MEDZOO_MEDMNIST_URL", "").rstrip("/")
    return name, f"{mirror}/{name}" if mirror else f"{BASE}/{name}?download=1", MD5[flag][size]


def download_medmnist(*, root: Path, arg: str | None) -> str:
    flag, size = _parse(arg)
    name, url, md5 = release_file(flag, size)
    dest = Path(root) / name
    fix = ("; MEDZOO_MEDMNIST_URL names the mirror it came from" if os.environ.get("MEDZOO_MEDMNIST_URL")
           else "; or set MEDZOO_MEDMNIST_URL to a mirror")
    if download_file(url, dest, md5=md5, fix=fix):
        return f"downloaded {url} to {dest} (md5 {md5} verified)"
    return f"{dest}: already present, md5 {md5} verified; nothing to do"


def _folder(root) -> Path:
    try:
        return data_root("medmnist", root)
    except MedzooError:
        default = Path.home() / ".medmnist"  # where the medmnist package downloads to
        if root is None and default.is_dir():
            return default
        raise


def missing_medmnist(*, root, arg: str | None) -> list[str]:
    flag, size = _parse(arg)
    folder = _folder(root)
    try:
        find_npz(folder, flag, size)
        return []
    except MedzooError:
        name = release_file(flag, size)[0]
        return [f"{folder / name} (`medzoo data download medmnist:{flag}{f'_{size}' if size else ''}` fetches it)"]


class MedmnistSource(ArraySource):
    """MedMNIST arrays; the registered preprocessing steps (CLAHE…) run through ``DataSource.prepare``."""


def open_medmnist(*, root=None, arg=None) -> MedmnistSource:
    flag, size = _parse(arg)
    npz = find_npz(_folder(root), flag, size)
    task, modality, body, license_, labels = flag_info(flag)
    arrays = unpack_npz(npz)
    mismatch = release_mismatch(npz, arrays, flag)  # `data check` shows it; training reads the file as it is
    images, records = [], []
    for split in ("train", "val", "test"):
        try:
            x = np.load(arrays / f"{split}_images.npy", mmap_mode="r")
            y = np.load(arrays / f"{split}_labels.npy")
        except (OSError, ValueError) as exc:
            raise MedzooError(f"{npz}: no readable {split}_images/{split}_labels ({exc}); re-download it") from None
        if len(x) != len(y):
            raise MedzooError(f"{npz}: {len(x)} {split} images but {len(y)} labels; re-download it")
        y = y.reshape(len(y), -1)
        offset = sum(len(a) for a in images)
        for i in range(len(x)):
            # ChestMNIST keeps its 14 labels; the others are N×1 class indices
            label = [int(v) for v in y[i]] if task == "multilabel" else int(y[i, 0])
            # MedMNIST publishes no patient ids: records stand alone (see the docs page on leakage)
            records.append(Record(f"{split}/{i}", label, split, None, meta={"index": offset + i}))
        images.append(x)
    pixels = _Concat(images)
    return MedmnistSource(f"medmnist:{npz.stem}", task, labels, records, pixels, source_files=[npz], meta={
        "channels": 3 if images[0].ndim == 4 else 1, "modality": modality, "body_part": body, "license": license_,
        "license_url": url_of(license_) or "https://medmnist.com/",
        "ordinal": flag == "retinamnist", "warnings": [mismatch] if mismatch else []})


class _Concat:
    """Index the train, val and test memmaps as one array without copying them."""

    def __init__(self, parts):
        self.parts = parts
        self.bounds = np.cumsum([0] + [len(p) for p in parts])

    def __getitem__(self, i: int) -> np.ndarray:
        k = int(np.searchsorted(self.bounds, i, side="right")) - 1
        return np.asarray(self.parts[k][i - self.bounds[k]])


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        name="medmnist", open=open_medmnist, task="classification", modality="various", body_part="various",
        license="cc-by-4.0", license_url="https://medmnist.com/",  # per flag: FLAGS
        docs="docs/datasets/medmnist.md",
        citation="Yang et al., MedMNIST v2: A large-scale lightweight benchmark for 2D and 3D biomedical image "
                 "classification, Scientific Data 2023.",
        description="a 2D MedMNIST/MedMNIST+ dataset from its npz, e.g. medmnist:pathmnist_224 "
                    "(chestmnist is multilabel, retinamnist ordinal)",
        takes_arg=True, arg_help="flag[_size]", download=download_medmnist, missing=missing_medmnist,
        recipe=recipe(epochs=20, batch_size=64, lr=5e-4, augment="light", patience=5,
                      preprocess={"size": 224, "fit": "stretch"})))

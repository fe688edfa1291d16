"""Benchmark inputs, generated once into bench/.data (reused by later runs): real file formats written with
the test suite's fixture writers (tests/datagen.py), at the sizes the benchmarks need."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from common import BENCH, DATA

sys.path.insert(0, str(BENCH.parent / "tests"))
import datagen  # noqa: E402  (the test suite's writers: real DICOM via pydicom, PNG via OpenCV)


def texture(shape, seed: int, dtype=np.uint16) -> np.ndarray:
    """Smooth anatomy-like texture with a little noise: compresses like an image, not like noise."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = shape
    img = np.zeros(shape, np.float32)
    for cells, amp in ((6, 0.5), (24, 0.3), (96, 0.15)):
        small = rng.random((cells, max(2, cells * w // h))).astype(np.float32)
        img += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 0.01, shape).astype(np.float32)
    top = 65535 if dtype == np.uint16 else 255
    return (np.clip(img / 0.95, 0, 1) * top).astype(dtype)


def mammogram(shape, seed: int) -> np.ndarray:
    """A 16-bit breast (datagen's half-disc and burnt-in label) filled with 14-bit texture."""
    breast = datagen.mammogram("L" if seed % 2 else "R", shape, seed) > 1000
    img = np.where(breast, 8000 + texture(shape, seed) // 8, 200).astype(np.uint16)
    img[40:120, 60:160] = 60000  # a burnt-in label
    return img


def _labels(folder: Path, names: list[str]) -> None:
    rows = ["path,label,patient_id"] + [f"{n},{'ab'[i % 2]},p{i}" for i, n in enumerate(names)]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


def dicom_folder(name: str, n: int, shape, *, j2k: bool = False) -> Path:
    """``dicom:`` layout: n 16-bit DICOMs (uncompressed or JPEG 2000 lossless) and labels.csv."""
    folder = DATA / name
    if (folder / "labels.csv").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        path = folder / f"img{i:04d}.dcm"
        px = mammogram(shape, i) if shape[0] > 1000 else texture(shape, i)
        datagen.write_dicom(path, px, PatientID=f"p{i}", WindowCenter=30000, WindowWidth=60000)
        if j2k:
            import pydicom
            from pydicom.uid import JPEG2000Lossless

            ds = pydicom.dcmread(path)
            ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
            ds.save_as(path, enforce_file_format=True)
        names.append(path.name)
    _labels(folder, names)
    return folder


def png_folder(name: str, n: int, size: int) -> Path:
    """``imagefolder:`` layout: n 8-bit grey PNGs in two class folders."""
    folder = DATA / name
    if (folder / ".done").is_file():
        return folder
    for i in range(n):
        datagen.write_png(folder / "ab"[i % 2] / f"img{i:05d}.png", texture((size, size), i, np.uint8))
    (folder / ".done").touch()
    return folder


def medmnist_npz(root: Path, n: int, side: int = 28) -> Path:
    """A MedMNIST-format npz (pneumoniamnist, grey side×side) with n training images of distinct texture."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "pneumoniamnist.npz"
    if path.is_file():
        return path
    rng = np.random.default_rng(n)
    base = rng.random((n, 4, 4)).astype(np.float32)  # distinct low-frequency layouts: distinct perceptual hashes
    grid = np.linspace(0, 3, side, dtype=np.float32)
    i = np.minimum(grid.astype(int), 2)
    f = grid - i
    rows = base[:, i] * (1 - f)[None, :, None] + base[:, i + 1] * f[None, :, None]
    img = rows[:, :, i] * (1 - f) + rows[:, :, i + 1] * f
    img = np.clip(img + rng.normal(0, 0.03, img.shape).astype(np.float32), 0, 1)
    images = (img * 255).astype(np.uint8)
    labels = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    k = max(1, n // 20)
    np.savez(path, train_images=images[2 * k:], train_labels=labels[2 * k:], val_images=images[:k],
             val_labels=labels[:k], test_images=images[k:2 * k], test_labels=labels[k:2 * k])
    return path

import numpy as np
import pytest
import torch

from medzoo.data import (
    ArraySource,
    Record,
    TorchDataset,
    TransformConfig,
    assign_splits,
    build_transform,
    check_leakage,
    data_root,
    to_tensor,
)
from medzoo.registry import MedzooError


def _records(n_patients=20, per_patient=3):
    return [Record(id=f"p{p}_{i}", label=p % 2, split="train", patient=f"P{p}")
            for p in range(n_patients) for i in range(per_patient)]


def test_splits_are_by_patient_and_deterministic():
    a, b = _records(), _records()
    assign_splits(a, (0.6, 0.2, 0.2), seed=3)
    assign_splits(b, (0.6, 0.2, 0.2), seed=3)
    assert [r.split for r in a] == [r.split for r in b]
    check_leakage(a)
    by_patient = {}
    for r in a:
        by_patient.setdefault(r.patient, set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())
    counts = {s: sum(r.split == s for r in a) for s in ("train", "val", "test")}
    assert counts == {"train": 36, "val": 12, "test": 12}


def test_planted_leak_is_caught():
    recs = _records()
    assign_splits(recs, seed=0)
    victim = next(r for r in recs if r.split == "train")
    twin = next(r for r in recs if r.patient == victim.patient and r is not victim)
    twin.split = "test"
    with pytest.raises(MedzooError, match=f"leakage.*{victim.patient}"):
        check_leakage(recs)


def test_data_root_error_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDZOO_DATA", str(tmp_path))
    with pytest.raises(MedzooError, match=r"no data for 'chest_xray': looked in .*chest_xray \(MEDZOO_DATA\)"
                                          r".*docs/datasets/chest_xray.md"):
        data_root("chest_xray")
    (tmp_path / "x").mkdir()
    monkeypatch.setenv("MEDZOO_DATA_CHEST_XRAY", str(tmp_path / "x"))
    assert data_root("chest_xray") == tmp_path / "x"


def test_to_tensor_channels_and_ranges():
    grey16 = np.full((4, 5), 65535, np.uint16)
    assert to_tensor(grey16, 3).shape == (3, 4, 5) and float(to_tensor(grey16, 3).max()) == 1.0
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 255
    assert to_tensor(rgba, 1).shape == (1, 4, 5)
    assert torch.allclose(to_tensor(rgba, 1), torch.full((1, 4, 5), 1 / 3))


def test_mask_stays_aligned_with_the_image_under_augmentation():
    img = np.zeros((64, 64), np.float32)
    img[10:30, 5:25] = 1.0  # a bright square; the mask marks exactly it
    mask = (img > 0).astype(np.int64)
    records = [Record(id="a", label=None, split="train", mask=0, meta={"index": 0})]
    src = ArraySource("sq", "segmentation", ["bg", "sq"], records, images=[img], masks=[mask])
    cfg = TransformConfig(image_size=48, augment="strong", mean=(0.0,), std=(1.0,), in_chans=1)
    ds = TorchDataset(src, "train", build_transform(cfg, train=True), in_chans=1)
    for seed in range(10):
        torch.manual_seed(seed)
        x, m = ds[0]
        assert x.shape == (1, 48, 48) and m.shape == (48, 48)
        inside = x[0][m == 1]
        outside = x[0][m == 0]
        assert inside.mean() > 0.7 and outside.mean() < 0.2

import json

import numpy as np
import pytest
from datagen import make_head_ct, write_png

from medzoo.cache import CachedSource, PreprocessConfig, cache_key, open_dataset
from medzoo.data import ArraySource, Record
from medzoo.registry import MedzooError
from medzoo.resize import fit_pair


def test_fit_pad_keeps_aspect_and_mask_alignment():
    img = np.zeros((40, 80), np.uint8)
    img[:, 40:] = 255
    mask = (img > 0).astype(np.uint8)
    out, m = fit_pair(img, mask, PreprocessConfig(size=20, fit="pad"))
    assert out.shape == (20, 20) and m.shape == (20, 20)
    assert (out[:5] == 0).all() and (m[:5] == 0).all()  # padding above the 10-px-high content
    assert out[10, 15] == 255 and m[10, 15] == 1 and out[10, 2] == 0 and m[10, 2] == 0


def test_cache_reused_rebuilt_when_stale_and_atomic(tmp_path, monkeypatch):
    make_head_ct(tmp_path / "hct")
    cfg = {"size": 32, "channels": 1}
    first = open_dataset("head_ct", tmp_path / "hct", preprocess=cfg)
    assert isinstance(first, CachedSource) and first.read(first.records[0]).shape == (32, 32)
    assert not [p for p in first.path.parent.iterdir() if ".tmp-" in p.name]  # no temp folder left
    again = open_dataset("head_ct", tmp_path / "hct", preprocess=cfg)
    assert again.path == first.path
    # another config: another cache; a changed file: another cache (a stale one is never read)
    other = open_dataset("head_ct", tmp_path / "hct", preprocess={**cfg, "clahe": 2.0})
    assert other.path != first.path
    png = tmp_path / "hct/head_ct/head_ct/000.png"
    import os
    os.utime(png, ns=(1, 1))  # touched, same bytes: the same data, the same cache
    assert open_dataset("head_ct", tmp_path / "hct", preprocess=cfg).path == first.path
    write_png(png, np.full((50, 44), 255, np.uint8))
    changed = open_dataset("head_ct", tmp_path / "hct", preprocess=cfg)
    assert changed.path != first.path
    # a cache folder with a wrong key (partial, tampered) is rebuilt, not trusted
    index = json.loads((changed.path / "index.json").read_text())
    index["key"] = "bogus"
    (changed.path / "index.json").write_text(json.dumps(index))
    rebuilt = open_dataset("head_ct", tmp_path / "hct", preprocess=cfg)
    assert json.loads((rebuilt.path / "index.json").read_text())["key"] == rebuilt.key


def test_cache_skip_bad_leaves_out_unreadable(tmp_path):
    make_head_ct(tmp_path / "hct")
    (tmp_path / "hct/head_ct/head_ct/003.png").write_bytes(b"not a png")
    with pytest.raises(MedzooError, match=r"003.png: not a readable image"):
        open_dataset("head_ct", tmp_path / "hct", preprocess={"size": 16})
    src = open_dataset("head_ct", tmp_path / "hct", preprocess={"size": 16}, skip_bad=True)
    assert len(src.records) == 19 and any("003.png" in s for s in src.meta["skipped"])


def test_named_steps_validated_and_run_for_any_source():
    # CLAHE and the named steps are registered by plugins and run for any DataSource (an ArraySource too)
    img = np.zeros((8, 8), np.uint8)
    img[:, :3] = 200
    src = ArraySource("arr", "classification", ["a"], [Record("0", 0, "train", meta={"index": 0})], images=[img])
    out, _ = src.prepare(src.records[0], PreprocessConfig(size=8, steps=("flip_to:right",)))
    assert out[:, -3:].min() == 200 and out[:, :3].max() == 0
    with pytest.raises(MedzooError, match="unknown preprocessing step 'breast_msk'; did you mean 'breast_mask'"):
        PreprocessConfig.from_dict({"steps": ["breast_msk"]})
    with pytest.raises(MedzooError, match="unknown preprocessing step 'flip_to:lfet'; did you mean 'flip_to:left'"):
        PreprocessConfig(steps=("flip_to:lfet",))
    with pytest.raises(MedzooError, match="clahe:-1.*positive clip"):
        PreprocessConfig(clahe=-1.0)
    with pytest.raises(MedzooError, match="unknown preprocess option 'sise'.*size"):
        PreprocessConfig.from_dict({"sise": 3})


def test_old_breast_mask_flip_to_fields_read_as_steps(tmp_path):
    # what lineages and recipes recorded before steps existed maps to the same config, the same cache key
    old = PreprocessConfig.from_dict({"size": 32, "breast_mask": True, "flip_to": "left", "clahe": 1.5})
    new = PreprocessConfig.from_dict({"size": 32, "steps": ["breast_mask", "flip_to:left"], "clahe": 1.5})
    assert old == new and old.to_dict()["steps"] == ["breast_mask", "flip_to:left"]
    assert "breast_mask" not in old.to_dict() and "flip_to" not in old.to_dict()
    assert PreprocessConfig.from_dict({"breast_mask": False, "flip_to": None}).steps == ()
    # they always ran mask first, whatever order a file lists them in
    legacy = PreprocessConfig.from_dict({"flip_to": "right", "breast_mask": True})
    assert legacy.steps == ("breast_mask", "flip_to:right")
    with pytest.raises(MedzooError, match="unknown preprocessing step 'flip_to:up'"):
        PreprocessConfig.from_dict({"flip_to": "up"})
    src = ArraySource("arr", "classification", ["a"], [Record("0", 0, "train", meta={"index": 0})],
                      images=[np.zeros((40, 40), np.uint8)])
    assert cache_key(src, old) == cache_key(src, new)
    assert cache_key(src, old) != cache_key(src, PreprocessConfig.from_dict({"size": 32, "clahe": 1.5}))


def test_cached_segmentation_through_torch_dataset_with_strong_augmentation(tmp_path):
    import torch
    from datagen import make_bcss

    from medzoo.data import TorchDataset, TransformConfig, augment_params, build_transform

    make_bcss(tmp_path)
    src = open_dataset("bcss:32", tmp_path, preprocess={"size": 32})
    assert src.read_mask(src.records[0]).shape == (32, 32)
    cfg = TransformConfig(image_size=24, augment="strong,stretch=0.3", in_chans=3)
    ds = TorchDataset(src, "train", build_transform(cfg, train=True), in_chans=3)
    for seed in range(3):
        torch.manual_seed(seed)
        x, m = ds[0]
        assert x.shape == (3, 24, 24) and m.shape == (24, 24) and int(m.max()) < 5
    assert augment_params("strong,flip=0")["flip"] == 0.0
    with pytest.raises(MedzooError, match="unknown augmentation preset 'strnog'; did you mean 'strong'"):
        augment_params("strnog")
    with pytest.raises(MedzooError, match="bad augmentation option 'spin=1'"):
        augment_params("light,spin=1")


def test_a_misspelt_step_in_a_recipe_fails_before_any_stage_trains():
    import medzoo
    from medzoo import store

    with pytest.raises(MedzooError, match="unknown preprocessing step 'breast_msk'; did you mean 'breast_mask'"):
        medzoo.train("timm:test_resnet", "scratch,phantom_agg,phantom_lesion",
                     overrides=["epochs=1", "image_size=32",
                                "phantom_lesion.preprocess={size: 32, steps: [breast_msk]}"])
    assert not store.list_local()

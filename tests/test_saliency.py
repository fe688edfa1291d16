"""Saliency maps through the real pytorch-grad-cam: shapes, the arch spec's layer and reshape (resnet18,
truncated resnet18, Swin-T's NHWC, ViT tokens), the files `write_maps` writes, the errors gallery with and
without the extra, and a sanity check that Grad-CAM finds the one thing a trained model looks at."""

import re
import sys

import numpy as np
import pytest
import torch
from conftest import run_cli
from zoofixtures import ckpt, trained  # noqa: F401

from medzoo import models, saliency
from medzoo.registry import MedzooError, registry


def build(arch: str, size: int = 64, classes: int = 3, chans: int = 3):
    torch.manual_seed(0)
    return models.build(registry().resolve("archs", arch), num_classes=classes, in_chans=chans, img_size=size).eval()


def two_inputs(size: int = 64, chans: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, chans, size, size, generator=g)
    x[1, :, : size // 2, : size // 2] += 3  # a bright corner in the second image only
    return x


def check_maps(out: np.ndarray, n: int, size: int) -> None:
    assert out.shape == (n, size, size) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 and np.allclose(out.max(axis=(1, 2)), 1, atol=1e-3)
    assert np.abs(out[0] - out[1]).mean() > 0.02, "two different images gave the same map"


@pytest.mark.parametrize("arch", ["resnet18", "swin_t"])
def test_gradcam_maps_have_the_input_size_range_and_differ_between_images(arch):
    model = build(arch)
    check_maps(saliency.maps(model, two_inputs(), arch=arch), 2, 64)
    # an explicit class per image: the map of another class differs
    a = saliency.maps(model, two_inputs(), targets=[0, 0], arch=arch)
    b = saliency.maps(model, two_inputs(), targets=[2, 2], arch=arch)
    assert not np.allclose(a, b)
    assert not model.training


def test_swin_t_layer_and_nhwc_reshape_come_from_its_spec():
    model = build("swin_t")
    layer, reshape = saliency.target(model, "swin_t")
    assert layer is model.layers[-1]
    assert reshape(torch.zeros(1, 2, 2, 768)).shape == (1, 768, 2, 2)
    # without the spec, the NHWC output is refused instead of read as 2 channels of nonsense
    with pytest.raises(MedzooError, match=r"gives \(2, 2, 2, 768\), not N×768×H×W"):
        saliency.maps(model, two_inputs())


def test_truncated_resnet_reads_the_last_stage_it_kept():
    model = build("resnet18@truncate=1")
    layer, reshape = saliency.target(model, "resnet18@truncate=1")
    assert layer is model.layer3 and reshape is None
    check_maps(saliency.maps(model, two_inputs(), arch="resnet18@truncate=1"), 2, 64)


def test_vit_tokens_are_cut_to_the_patch_grid():
    model = build("timm:test_vit")
    layer, reshape = saliency.target(model, "timm:test_vit")
    assert layer is model.blocks[-1].norm1
    check_maps(saliency.maps(model, two_inputs(), arch="timm:test_vit"), 2, 64)


def test_scorecam_is_gradient_free_and_has_the_same_contract():
    model = build("timm:test_resnet", size=64, chans=1)  # its last stage is 2×2 at 64 px
    for p in model.parameters():
        p.requires_grad_(False)
    check_maps(saliency.maps(model, two_inputs(64, 1), method="scorecam", arch="timm:test_resnet"), 2, 64)


def test_bad_requests_are_one_line_errors():
    model = build("resnet18", size=32)
    with pytest.raises(MedzooError, match="unknown saliency method 'occlusion'"):
        saliency.maps(model, two_inputs(32), method="occlusion")
    with pytest.raises(MedzooError, match="N×C×H×W"):
        saliency.maps(model, two_inputs(32)[0])
    with pytest.raises(MedzooError, match=r"in 0\.\.2"):
        saliency.maps(model, two_inputs(32), targets=[0, 3])
    with pytest.raises(MedzooError, match="1 targets for 2 images"):
        saliency.maps(model, two_inputs(32), targets=[0])
    seg = models.build(registry().resolve("archs", "unet_resnet18"), num_classes=2, in_chans=1, img_size=32)
    with pytest.raises(MedzooError, match="segmentation model"):
        saliency.maps(seg, torch.zeros(1, 1, 32, 32), arch="unet_resnet18")


def test_overlay_colours_salient_pixels_red_and_takes_grey_and_16_bit_images():
    grey = np.full((40, 60), 128, np.uint8)
    m = np.zeros((20, 30), np.float32)
    m[:, :15] = 1  # the left half, at half the image's resolution
    out = saliency.overlay(grey, m)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert out[:, :25, 0].mean() > out[:, :25, 2].mean() + 50  # jet: 1 is red
    assert out[:, 35:, 2].mean() > out[:, 35:, 0].mean() + 50  # 0 is blue
    wide = saliency.overlay(np.linspace(0, 4095, 40 * 60).reshape(40, 60).astype(np.uint16), m)
    assert wide.shape == (40, 60, 3)
    with pytest.raises(MedzooError, match="one H×W map"):
        saliency.overlay(grey, np.zeros((2, 20, 30)))


def test_write_maps_writes_one_png_per_input_and_refuses_name_clashes(tmp_path):
    from PIL import Image

    model = build("resnet18")
    x = two_inputs()
    images = [np.zeros((50, 40), np.uint8), np.full((64, 64, 3), 200, np.uint8)]
    out = tmp_path / "maps"
    files = saliency.write_maps(model, x, images, ["in/a.dcm", "in/b.png"], out, "gradcam", arch="resnet18")
    assert files == [out / "a_saliency.png", out / "b_saliency.png"]
    assert Image.open(files[0]).size == (40, 50) and Image.open(files[1]).mode == "RGB"
    expected = saliency.overlay(images[1], saliency.maps(model, x, arch="resnet18")[1])
    assert np.array_equal(np.asarray(Image.open(files[1])), expected)
    assert sorted(p.name for p in out.iterdir()) == ["a_saliency.png", "b_saliency.png"]  # no temporary left
    before = files[0].read_bytes()
    with pytest.raises(MedzooError, match="a_saliency.png exists"):
        saliency.write_maps(model, x, images, ["other/a.png", "c.png"], out, arch="resnet18")
    assert files[0].read_bytes() == before and not (out / "c_saliency.png").exists()  # nothing written
    with pytest.raises(MedzooError, match="would both write a_saliency.png"):
        saliency.write_maps(model, x, images, ["x/a.png", "y/a.dcm"], tmp_path / "new", arch="resnet18")
    assert not (tmp_path / "new").exists()
    saliency.write_maps(model, x, images[::-1], ["a.png", "b.png"], out, overwrite=True, arch="resnet18")
    assert files[0].read_bytes() != before


def test_gradcam_of_a_trained_model_peaks_on_the_bright_square():
    """A model trained to tell images with a bright square from noise: Grad-CAM of the 'square' class peaks
    in the quadrant holding the square (a transposed or flipped map, or a wrong layer, would not)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: more threads only contend (4 s instead of minutes)
    try:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)

        def sample(n):
            x = rng.normal(0, 0.3, (n, 1, 64, 64)).astype(np.float32)
            y, quad = rng.integers(0, 2, n), rng.integers(0, 4, n)
            for i in np.flatnonzero(y):
                qy, qx = divmod(int(quad[i]), 2)
                oy, ox = qy * 32 + rng.integers(2, 18), qx * 32 + rng.integers(2, 18)
                x[i, 0, oy:oy + 12, ox:ox + 12] += 1.5
            return torch.from_numpy(x), torch.from_numpy(y), quad

        model = build("timm:test_resnet", classes=2, chans=1).train()
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(40):
            x, y, _ = sample(16)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        x, y, quad = sample(64)
        with torch.no_grad():
            assert (model(x).argmax(1) == y).float().mean() >= 0.9
        pos = (y == 1).numpy()
        maps = saliency.maps(model, x[pos], targets=[1] * int(pos.sum()), arch="timm:test_resnet")
        peaks = [np.unravel_index(m.argmax(), m.shape) for m in maps]
        hits = sum((py // 32) * 2 + px // 32 == q for (py, px), q in zip(peaks, quad[pos]))
        assert hits >= 0.9 * pos.sum()
    finally:
        torch.set_num_threads(threads)


# -- the errors gallery -------------------------------------------------------------------------------

def figures(page: str) -> tuple[int, int]:
    cards = len(re.findall(r'<div class="card (?:wrong|right)"', page))
    return cards, len(re.findall(r'<figure class="saliency"><img src="data:image/png;base64,', page))


def test_errors_gallery_shows_a_gradcam_map_per_card_and_no_saliency_turns_it_off(ckpt):
    from medzoo.gallery import gallery

    path, wrong, shown = gallery(ckpt, right=4)
    page = path.read_text()
    cards, maps = figures(page)
    assert cards == wrong + shown > 0 and maps == cards
    assert page.count("Grad-CAM: ") == cards
    proc = run_cli("errors", ckpt, "--right", "4", "--no-saliency", "-o", str(path.with_name("plain.html")))
    plain = path.with_name("plain.html").read_text()
    assert figures(plain) == (cards, 0) and "Grad-CAM" not in plain and "warning" not in proc.stderr


def test_an_arch_without_a_saliency_layer_leaves_the_maps_out_with_a_warning(ckpt, monkeypatch):
    from dataclasses import replace

    from medzoo.gallery import gallery

    archs = registry().entries["archs"]
    monkeypatch.setitem(archs, "timm", replace(archs["timm"], saliency_target=lambda model: (None, None)))
    with pytest.warns(UserWarning, match="saliency maps left out: architecture 'timm:test_resnet' has no layer"):
        path, wrong, shown = gallery(ckpt, right=2)
    assert figures(path.read_text()) == (wrong + shown, 0) and "Grad-CAM" not in path.read_text()
    with pytest.raises(MedzooError, match="its plugin should set saliency_target"):
        gallery(ckpt, right=2, saliency=True)


def test_without_the_extra_the_gallery_warns_once_and_still_builds(ckpt, monkeypatch):
    from medzoo.gallery import gallery

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # what `import` sees when it is not installed
    with pytest.warns(UserWarning, match=r"pip install 'medzoo\[saliency\]'") as caught:
        path, wrong, shown = gallery(ckpt, right=2)
    assert len([w for w in caught if "saliency" in str(w.message)]) == 1
    assert figures(path.read_text()) == (wrong + shown, 0)
    with pytest.raises(MedzooError, match=r"pip install 'medzoo\[saliency\]'"):
        gallery(ckpt, right=2, saliency=True)
    with pytest.raises(MedzooError, match=r"pip install 'medzoo\[saliency\]'"):
        saliency.maps(build("resnet18", size=32), two_inputs(32))

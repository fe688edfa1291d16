
import numpy as np
import pytest
from datagen import mammogram, write_dicom
from pydicom.data import get_testdata_file

from medzoo.registry import MedzooError
from medzoo_plugins.imaging import breast_mask, canonical_side, clahe, facing, read_dicom, read_image


def test_ct_small_rescale_and_full_range():
    ds_path = get_testdata_file("CT_small.dcm")
    img = read_dicom(ds_path)
    assert img.shape == (128, 128) and img.dtype == np.uint16
    assert img.min() == 0 and img.max() == 65535  # no window in the file: its full HU range


def test_mr_small_uses_its_window(tmp_path):
    img = read_dicom(get_testdata_file("MR_small.dcm"))  # WindowCenter 600 / Width 1600
    assert img.shape == (64, 64) and img.dtype == np.uint16
    assert 0 < (img == 65535).mean() + (img == 0).mean() < 0.5
    # an explicit window overrides the file's: a narrow window saturates far more pixels
    narrow = read_dicom(get_testdata_file("MR_small.dcm"), window=(600, 10))
    assert ((narrow == 0) | (narrow == 65535)).mean() > 0.9


def test_monochrome1_is_inverted(tmp_path):
    path = get_testdata_file("dicomdirtests/77654033/CR1/6154")
    img = read_dicom(path)
    assert img.shape == (16, 16)
    # the same pixels labelled MONOCHROME2 must come out as the exact complement
    import pydicom
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME2"
    copy = tmp_path / "mono2.dcm"
    ds.save_as(copy)
    assert np.array_equal(img.astype(np.int64), 65535 - read_dicom(copy).astype(np.int64))


def test_slope_intercept_and_window_applied(tmp_path):
    raw = np.array([[0, 100], [200, 300]], np.uint16)
    # stored 0..300 -> HU -1000..500 with slope 5, intercept -1000; window 0 +- 500 maps -500..500 to 0..1
    p = write_dicom(tmp_path / "w.dcm", raw, RescaleSlope=5, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=1000)
    img = read_dicom(p).astype(np.float64) / 65535
    assert img[0, 0] == 0 and img[1, 1] == 1.0
    assert abs(img[0, 1] - 0.0) < 1e-3 and abs(img[1, 0] - 0.5) < 2e-3  # -500 HU at the window floor; 0 HU mid-grey


def test_truncated_dicom_names_the_file():
    path = get_testdata_file("MR_truncated.dcm")
    with pytest.raises(MedzooError, match=r"MR_truncated.dcm: corrupt or truncated DICOM pixel data"):
        read_dicom(path)


def test_compressed_dicom_without_decoder_names_the_packages():
    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    with pytest.raises(MedzooError, match=r"JPEG-LS.*no installed package can decode it.*pylibjpeg.*gdcm"):
        read_dicom(path)


def test_not_a_dicom_and_corrupt_image(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"hello")
    with pytest.raises(MedzooError, match=r"x.dcm: not a DICOM file"):
        read_dicom(bad)
    junk = tmp_path / "._IM-0001.jpeg"
    junk.write_bytes(b"\x00\x05\x16\x07")
    with pytest.raises(MedzooError, match=r"not a readable image"):
        read_image(junk)


def test_breast_mask_drops_the_marker_and_flip_is_canonical():
    img = mammogram("R", shape=(120, 96))
    assert img[6, 8] == 60000  # the label marker on the far (left) side
    masked = breast_mask(img)
    assert masked[6, 8] == 0 and masked[60, 90] == img[60, 90]
    assert facing(masked) == "right"
    flipped, _ = canonical_side(masked, "left")
    assert facing(flipped) == "left" and np.array_equal(flipped[:, ::-1], masked)


def test_clahe_keeps_depth_and_raises_local_contrast():
    rng = np.random.default_rng(0)
    img = (30000 + rng.integers(0, 500, size=(64, 64))).astype(np.uint16)  # low contrast
    out = clahe(img, 2.0)
    assert out.dtype == np.uint16 and out.shape == img.shape
    assert out.std() > 3 * img.std()

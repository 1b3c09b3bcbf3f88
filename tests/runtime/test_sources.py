"""runtime/sources.py: every input kind (image formats, folders, DICOM, video) built from a real BUSI scan, and the
broken files a user will hand it."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from ultraseg.data.busi import read_image
from ultraseg.errors import DataError
from ultraseg.runtime import sources
from ultraseg.runtime.sources import Frame, TooManyPixels, expand, read_frames

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


# ---------------------------------------------------------------------------------------------------- builders


@pytest.fixture(scope="module")
def grey(busi_mirror: Path) -> np.ndarray:
    """A real BUSI scan as 8-bit greyscale."""
    return read_image(busi_mirror / "benign" / "benign (1).webp")


def colour_version(grey: np.ndarray) -> np.ndarray:
    """An RGB image with distinct channels, so a swapped channel order cannot go unnoticed."""
    return np.dstack([grey, np.roll(grey, 7, axis=1), 255 - grey])


def write_image(path: Path, rgb_or_grey: np.ndarray, *params: int) -> Path:
    """Save through OpenCV (BGR order on disk, as any other writer's RGB file reads back in OpenCV)."""
    array = rgb_or_grey
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(path.suffix, array, list(params))
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    data.tofile(str(path))
    return path


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", frames: int | None = None,
                transfer_syntax: str | None = None, pixel_data: bytes | None = None, **elements: object) -> Path:
    """A DICOM file holding ``pixels`` ((frames,) rows, columns(, 3)), uint8 or uint16, with extra elements."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = US_MULTIFRAME_STORAGE if frames else US_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2")
    shape = pixels.shape[1:] if frames else pixels.shape
    ds.Rows, ds.Columns = shape[0], shape[1]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    if frames:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for key, value in elements.items():
        setattr(ds, key, value)
    if pixel_data is not None or "PixelData" not in elements:
        ds.PixelData = pixel_data if pixel_data is not None else np.ascontiguousarray(pixels).tobytes()
    if pixel_data is not None:
        ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def without_pixels(path: Path, grey: np.ndarray) -> Path:
    write_dicom(path, grey)
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    return path


def us_region(delta_x_cm: float, delta_y_cm: float, units: int = 3) -> list:
    from pydicom.dataset import Dataset

    region = Dataset()
    region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = units, units
    region.PhysicalDeltaX, region.PhysicalDeltaY = delta_x_cm, delta_y_cm
    return [region]


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    """A Motion-JPEG AVI of grey frames."""
    height, width = frames[0].shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def only(path: Path) -> Frame:
    frames = list(read_frames(path))
    assert len(frames) == 1
    return frames[0]


# ---------------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("suffix, params, lossless", [
    (".png", (), True), (".bmp", (), True), (".tif", (), True),
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), True), (".jpg", (cv2.IMWRITE_JPEG_QUALITY, 95), False),
])
def test_image_formats_read_at_their_own_size(tmp_path, grey, suffix, params, lossless):
    frame = only(write_image(tmp_path / f"scan{suffix}", grey, *params))
    assert (frame.index, frame.pixel_spacing, frame.multiframe) == (0, None, False)
    image = frame.image
    if suffix == ".webp":  # WebP has no grey mode: it decodes to three equal channels
        assert image.shape == (*grey.shape, 3) and (image == image[..., :1]).all()
        image = image[..., 0]
    assert image.shape == grey.shape
    difference = np.abs(image.astype(int) - grey).max()
    assert difference == 0 if lossless else difference < 24


def test_16bit_png_stays_16bit(tmp_path, grey):
    frame = only(write_image(tmp_path / "scan16.png", grey.astype(np.uint16) * 257))
    assert frame.image.dtype == np.uint16
    np.testing.assert_array_equal(frame.image, grey.astype(np.uint16) * 257)


@pytest.mark.parametrize("alpha", [False, True])
def test_colour_png_comes_back_in_rgb_order(tmp_path, grey, alpha):
    rgb = colour_version(grey)
    if alpha:
        rgb = np.dstack([rgb, np.full_like(grey, 200)])
    frame = only(write_image(tmp_path / "colour.png", rgb))
    np.testing.assert_array_equal(frame.image, rgb)


def test_folder_is_searched_recursively_in_order(tmp_path, grey):
    root = tmp_path / "study"
    write_image(root / "b.png", grey)
    write_image(root / "a" / "z.jpg", grey)
    write_dicom(root / "a" / "deeper" / "IM0001", grey)  # DICOM known only by its preamble, as PACS exports are
    write_image(root / ".hidden" / "c.png", grey)
    (root / "notes.txt").write_text("not an image")
    (root / "IM0002").write_bytes(b"x" * 200)  # no extension and no preamble: not ours
    found = expand([root])
    assert [p.relative_to(root).as_posix() for p in found] == ["a/deeper/IM0001", "a/z.jpg", "b.png"]
    assert only(found[0]).image.shape == grey.shape


def test_expand_refuses_missing_unsupported_and_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    for name, reason in (("missing.png", "no such file"), ("notes.txt", "unsupported"), ("empty", "no image")):
        with pytest.raises(DataError, match=reason) as info:
            expand([tmp_path / name])
        assert name in str(info.value)


def test_expand_drops_a_file_named_twice(tmp_path, grey):
    path = write_image(tmp_path / "a.png", grey)
    assert expand([path, tmp_path, tmp_path / "." / "a.png"]) == [path]


# ---------------------------------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_8bit_is_untouched(tmp_path, grey):
    frame = only(write_dicom(tmp_path / "m2.dcm", grey))
    assert (frame.index, frame.multiframe, frame.pixel_spacing) == (0, False, None)
    np.testing.assert_array_equal(frame.image, grey)


def test_dicom_monochrome1_is_inverted(tmp_path, grey):
    np.testing.assert_array_equal(only(write_dicom(tmp_path / "m1.dcm", 255 - grey, "MONOCHROME1")).image, grey)


def test_dicom_rescale_is_applied(tmp_path, grey):
    # stored = (grey + 10) * 2: the rescale (slope 0.5, intercept -10) brings back grey exactly
    stored = (grey.astype(np.uint16) + 10) * 2
    frame = only(write_dicom(tmp_path / "rescaled.dcm", stored, RescaleSlope=0.5, RescaleIntercept=-10))
    np.testing.assert_array_equal(frame.image, grey)


def test_dicom_window_maps_to_8bit(tmp_path, grey):
    stored = grey.astype(np.uint16) * 16  # 12-bit data, the full range windowed
    frame = only(write_dicom(tmp_path / "windowed.dcm", stored, WindowCenter=2048, WindowWidth=4096))
    assert frame.image.dtype == np.uint8
    assert np.abs(frame.image.astype(int) - grey).max() <= 1


def test_dicom_without_window_outside_8bit_is_stretched(tmp_path, grey):
    stored = grey.astype(np.uint16) * 100 + 1000
    expected = np.rint((grey - float(grey.min())) * 255 / (float(grey.max()) - grey.min())).astype(np.uint8)
    np.testing.assert_array_equal(only(write_dicom(tmp_path / "wide.dcm", stored)).image, expected)


def test_dicom_rgb_and_ybr_full_give_rgb(tmp_path, grey):
    from pydicom.pixels import convert_color_space

    rgb = colour_version(grey)
    np.testing.assert_array_equal(only(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB")).image, rgb)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    back = only(write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL")).image
    assert back.shape == rgb.shape and np.abs(back.astype(int) - rgb).max() <= 2  # YBR rounding only


def test_dicom_cine_yields_every_frame(tmp_path, grey):
    cine = np.stack([grey, grey[::-1], np.roll(grey, 20, axis=1)])
    frames = list(read_frames(write_dicom(tmp_path / "cine.dcm", cine, frames=3)))
    assert [(f.index, f.multiframe) for f in frames] == [(0, True), (1, True), (2, True)]
    for frame, expected in zip(frames, cine):
        np.testing.assert_array_equal(frame.image, expected)


def test_dicom_spacing_from_ultrasound_region_in_cm(tmp_path, grey):
    path = write_dicom(tmp_path / "region.dcm", grey, SequenceOfUltrasoundRegions=us_region(0.01, 0.02),
                       PixelSpacing=[9, 9])  # the region wins: ultrasound scanners fill it, not PixelSpacing
    assert only(path).pixel_spacing == pytest.approx((0.2, 0.1))


def test_dicom_spacing_ignores_regions_not_in_cm(tmp_path, grey):
    # units 4 is seconds (a Doppler strip): no spatial meaning, so PixelSpacing is used instead
    path = write_dicom(tmp_path / "doppler.dcm", grey, SequenceOfUltrasoundRegions=us_region(0.01, 0.02, units=4),
                       PixelSpacing=[0.3, 0.4])
    assert only(path).pixel_spacing == pytest.approx((0.3, 0.4))


def test_dicom_without_pixel_data_is_refused(tmp_path, grey):
    path = without_pixels(tmp_path / "report.dcm", grey)
    with pytest.raises(DataError, match="no Pixel Data") as info:
        list(read_frames(path))
    assert str(path) in str(info.value)


def test_dicom_compressed_without_codec_names_syntax_and_codec(tmp_path, grey):
    """Where the pylibjpeg plugins are missing (made unimportable in a fresh interpreter), a JPEG Lossless file
    gets one line naming its transfer syntax and the codec to install."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    path = write_dicom(tmp_path / "p14.dcm", grey, transfer_syntax=JPEGLosslessSV1,
                       pixel_data=encapsulate([lossless_jpeg_sv1(grey)]))
    code = ("import sys\n"
            "for name in ('pylibjpeg', 'libjpeg', 'openjpeg'): sys.modules[name] = None\n"
            "from ultraseg.errors import DataError\nfrom ultraseg.runtime.sources import read_frames\n"
            f"try:\n    list(read_frames({str(path)!r}))\nexcept DataError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    message = out.stdout.strip()
    assert message.startswith(f"{path}: cannot decode the pixel data: transfer syntax JPEG Lossless")
    assert "Selection Value 1" in message and "pylibjpeg-libjpeg" in message and "\n" not in message


def lossless_jpeg_sv1(image: np.ndarray) -> bytes:
    """An 8-bit grey image as a JPEG Lossless, Process 14, Selection Value 1 stream (ITU T.81 H): each pixel
    predicted by its left neighbour (the first column by the pixel above, the first pixel by 128), the differences
    Huffman-coded by their bit-length category. No package on PyPI writes this predictor (imagecodecs' LJ92 writes
    predictor 6, another transfer syntax), so the test writes it; the decoder owes it the exact pixels back."""
    x = image.astype(np.int32)
    pred = np.empty_like(x)
    pred[:, 1:], pred[1:, 0], pred[0, 0] = x[:, :-1], x[:-1, 0], 128
    diff = (x - pred).ravel()
    ssss = np.where(diff == 0, 0, np.floor(np.log2(np.maximum(np.abs(diff), 1))).astype(int) + 1)
    extra = np.where(diff < 0, diff - 1, diff) & ((1 << ssss) - 1)
    # a Huffman table giving each of the categories 0..8 a four-bit code (0000 .. 1000)
    bits = "".join(f"{cat:04b}" + (f"{val:0{cat}b}" if cat else "") for cat, val in zip(ssss, extra))
    bits += "1" * (-len(bits) % 8)
    data = np.packbits(np.frombuffer(bits.encode(), np.uint8) - ord("0")).tobytes().replace(b"\xff", b"\xff\x00")
    height, width = image.shape
    dht = b"\x00" + bytes([0, 0, 0, 9] + [0] * 12) + bytes(range(9))
    sof = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"
    sos = b"\x01\x01\x00" + b"\x01\x00\x00"  # one component, table 0; predictor 1, Se 0, no point transform
    segment = lambda marker, body: marker + struct.pack(">H", len(body) + 2) + body  # noqa: E731
    return (b"\xff\xd8" + segment(b"\xff\xc4", dht) + segment(b"\xff\xc3", sof) + segment(b"\xff\xda", sos)
            + data + b"\xff\xd9")


@pytest.mark.parametrize("syntax", ["JPEGLosslessSV1", "JPEGLSLossless", "JPEG2000Lossless"])
def test_compressed_ultrasound_dicom_decodes_to_the_source_pixels(tmp_path, grey, syntax):
    """JPEG Lossless (Process 14, SV1), JPEG-LS and JPEG 2000 files written from a BUSI scan, a still and a
    three-frame cine: pydicom decodes them through the pylibjpeg plugins to exactly the pixels written."""
    import pydicom
    from pydicom import uid
    from pydicom.encaps import encapsulate

    cine = np.stack([grey, grey[::-1], np.roll(grey, 9, axis=1)])
    still = write_dicom(tmp_path / "still.dcm", grey)
    loop = write_dicom(tmp_path / "cine.dcm", cine, frames=3)
    transfer_syntax = getattr(uid, syntax)
    for path, frames in ((still, grey[None]), (loop, cine)):
        ds = pydicom.dcmread(path)
        if syntax == "JPEGLosslessSV1":
            ds.PixelData = encapsulate([lossless_jpeg_sv1(frame) for frame in frames])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = transfer_syntax
        else:  # the encoders pydicom uses: pyjpegls for JPEG-LS, pylibjpeg-openjpeg for JPEG 2000
            ds.compress(transfer_syntax)
        ds.save_as(path, enforce_file_format=True)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == transfer_syntax
        read = list(read_frames(path))
        assert len(read) == len(frames)
        for frame, expected in zip(read, frames):
            assert frame.image.dtype == np.uint8 and np.array_equal(frame.image, expected)


def test_dicom_corrupt_jpeg2000_is_a_decode_error_not_a_missing_codec(tmp_path, grey):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(tmp_path / "j2k.dcm", grey, transfer_syntax=JPEG2000Lossless,
                       pixel_data=encapsulate([b"\xff\x4f\xff\x51" + bytes(40)]))
    with pytest.raises(DataError, match="JPEG 2000") as info:
        list(read_frames(path))
    assert "not installed" not in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------- video


def test_video_yields_every_frame_in_rgb(tmp_path, grey):
    grey = grey[: grey.shape[0] // 2 * 2, : grey.shape[1] // 2 * 2]  # MJPEG's 4:2:0 chroma needs even sizes
    clip = [grey, grey[::-1], np.roll(grey, 20, axis=1)]
    frames = list(read_frames(write_video(tmp_path / "clip.avi", clip)))
    assert [(f.index, f.multiframe, f.pixel_spacing) for f in frames] == [(0, True, None), (1, True, None),
                                                                          (2, True, None)]
    for frame, expected in zip(frames, clip):
        assert frame.image.shape == (*grey.shape, 3)
        assert np.abs(frame.image.astype(int).mean(axis=2) - expected).mean() < 4  # MJPEG is lossy


# ---------------------------------------------------------------------------------------------------- broken files


def truncated_png(path: Path, grey: np.ndarray) -> Path:
    data = cv2.imencode(".png", grey)[1].tobytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("name, make, reason", [
    ("zero.png", lambda p, g: p.write_bytes(b""), "empty file"),
    ("text.png", lambda p, g: p.write_text("this is not a picture\n"), "not a readable image"),
    ("half.png", truncated_png, "truncated PNG"),
    ("zero.dcm", lambda p, g: p.write_bytes(b""), "empty file"),
    ("text.dcm", lambda p, g: p.write_text("plain text\n" * 20), "not a DICOM file"),
    ("text.avi", lambda p, g: p.write_text("plain text\n" * 20), "video"),
])
def test_broken_files_raise_naming_the_file(tmp_path, grey, name, make, reason):
    path = tmp_path / name
    make(path, grey)
    with pytest.raises(DataError, match=reason) as info:
        list(read_frames(path))
    assert str(info.value).startswith(str(path))


# ---------------------------------------------------------------------------------------------------- pixel budget


def huge_png(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR declares ``width`` x ``height`` (CRC recomputed): decoding it would need
    width x height bytes, its header says so in 24."""
    data = bytearray(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def huge_jpeg(grey: np.ndarray, width: int, height: int) -> bytes:
    """A JPEG of ``grey`` whose start-of-frame declares ``width`` x ``height``."""
    data = bytearray(cv2.imencode(".jpg", grey)[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def huge_tiff(width: int, height: int) -> bytes:
    """An uncompressed TIFF header declaring ``width`` x ``height`` 8-bit grey pixels, with no pixels behind it."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
            (278, 4, height), (279, 4, width * height)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", tag, kind, 1, value)
                                                   for tag, kind, value in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


@pytest.mark.parametrize("name, size", [("big.png", 20000), ("big.jpg", 20000), ("big.tif", 8000)])
def test_png_jpeg_and_tiff_headers_are_refused_before_decoding(tmp_path, grey, name, size):
    data = {"big.png": huge_png, "big.jpg": lambda w, h: huge_jpeg(grey, w, h), "big.tif": huge_tiff}[name](size, size)
    path = tmp_path / name
    path.write_bytes(data)
    for named, read in ((str(path), lambda: list(read_frames(path, 50_000_000))),
                        (name, lambda: list(sources.frames_from_bytes(data, name, 50_000_000)))):
        with pytest.raises(TooManyPixels) as info:
            read()
        assert str(info.value) == (f"{named}: declares {size} x {size} ({size * size / 1e6:.1f} megapixels) per "
                                   "frame, over the budget of 50 megapixels (--max-pixels)")


def test_an_image_beyond_pillows_own_limit_is_refused(tmp_path):
    path = tmp_path / "big.tif"
    path.write_bytes(huge_tiff(20000, 20000))
    with pytest.raises(TooManyPixels, match=r"Pillow's own limit \(400.0 megapixels\)"):
        list(read_frames(path, 50_000_000))


def test_budget_is_per_frame_and_inclusive(tmp_path, grey):
    path = write_image(tmp_path / "scan.png", grey)
    height, width = grey.shape
    assert only(path).image.shape == grey.shape  # no budget: read as ever
    assert np.array_equal(next(read_frames(path, width * height)).image, grey)
    with pytest.raises(TooManyPixels, match=f"{width} x {height}"):
        list(read_frames(path, width * height - 1))


def test_dicom_and_video_headers_are_checked(tmp_path, grey):
    cine = write_dicom(tmp_path / "cine.dcm", np.stack([grey] * 3), frames=3)
    clip = write_video(tmp_path / "clip.avi", [grey[:200, :200]] * 2)
    pixels = grey.shape[0] * grey.shape[1]
    assert len(list(read_frames(cine, pixels))) == 3  # the budget is per frame, not for the loop
    with pytest.raises(TooManyPixels, match=rf"{grey.shape[1]} x {grey.shape[0]} .*\(3 frames\)") as info:
        list(read_frames(cine, pixels - 1))
    assert str(info.value).startswith(str(cine))
    with pytest.raises(TooManyPixels, match="200 x 200") as info:
        list(read_frames(clip, 200 * 200 - 1))
    assert str(info.value).startswith(str(clip)) and len(list(read_frames(clip, 200 * 200))) == 2


def test_unreadable_header_is_left_to_the_reader(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(DataError, match="not a readable image") as info:
        list(read_frames(path, 100))
    assert not isinstance(info.value, TooManyPixels)

"""Turn input paths (image files, folders, DICOM and video files) into frames the runtime can segment.

* Images (PNG, JPEG, BMP, TIFF, WebP) are decoded by OpenCV unchanged, so 16-bit PNG and TIFF stay 16-bit, and come
  back in RGB(A) order, as the runtime expects. A TIFF yields its first page only.
* Folders are searched recursively, in sorted order, for those extensions, for DICOM (``.dcm``/``.dicom`` or any
  file with the ``DICM`` preamble) and for video; hidden files and anything else are skipped.
* DICOM files (read with pydicom, imported only when a DICOM is read) yield every frame of a cine loop; compressed
  pixel data (JPEG Lossless, JPEG-LS, JPEG 2000, RLE) decodes through pydicom's pylibjpeg plugins. Grey frames
  are mapped to 8 bits as a viewer would show them: the modality LUT (RescaleSlope/Intercept) is applied; then the
  first WindowCenter/WindowWidth, when present, maps to 0..255 by DICOM's linear VOI function; without a window,
  values already within 0..255 are kept as they are (an ordinary 8-bit ultrasound frame is left untouched) and any
  other range is stretched from the frame's minimum..maximum to 0..255. VOI LUT sequences are not applied.
  MONOCHROME1 is then inverted. RGB, YBR_FULL(_422) and PALETTE COLOR frames come back as 8-bit RGB.
  The pixel spacing, in mm as (row, column), comes from the first ultrasound region whose physical units are cm
  (SequenceOfUltrasoundRegions, PhysicalDeltaY/X x 10), else from PixelSpacing, else it is unknown (None).
* Video files (OpenCV, through FFmpeg) yield every frame, in RGB.

Every file that cannot be read raises :class:`~ultraseg.errors.DataError` naming the file and the reason.
Given a pixel budget, a file whose header declares larger frames raises :class:`TooManyPixels` before a pixel is
decoded: a small, highly compressed file can declare a frame whose decoding alone would fill the machine's memory.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ultraseg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".tif", ".tiff", ".webp")
DICOM_SUFFIXES = (".dcm", ".dicom")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".wmv", ".mpg", ".mpeg", ".y4m")
CM_UNITS = 3
"""PhysicalUnitsX/YDirection code for centimetres (DICOM PS3.3 C.8.5.5.1.15)."""
MAX_PIXELS = 50_000_000
"""The default budget of pixels per frame (``--max-pixels``). Scanners write frames of well under a megapixel to a
few megapixels (a 4K screen capture is 8.3), and stitched panoramas stay below this; decoding a frame this large
already takes a few hundred MB."""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""JPEG start-of-frame markers: every SOFn but DHT, JPG and DAC, which share the range."""


class TooManyPixels(DataError):
    """A file declares frames larger than the pixel budget."""


@dataclass
class Frame:
    """One image to segment."""

    source: Path
    """The file it came from."""
    index: int
    """Its frame number within the file: 0 for a still image."""
    image: np.ndarray
    """Grey (H, W), RGB or RGBA (H, W, 3|4), 8- or 16-bit, as the runtime accepts."""
    pixel_spacing: tuple[float, float] | None = None
    """(row, column) mm per pixel, when the file says."""
    multiframe: bool = False
    """Whether the file holds (or may hold) several frames: a cine DICOM or a video."""


# ---------------------------------------------------------------------------------------------------- finding files


def kind(path: Path) -> str | None:
    """``image``, ``dicom`` or ``video`` by extension (or the DICOM preamble); None for anything else."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in DICOM_SUFFIXES or has_dicom_preamble(path):
        return "dicom"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def has_dicom_preamble(path: Path) -> bool:
    """Whether bytes 128..131 of the file read ``DICM``, as in every DICOM Part 10 file."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def expand(inputs: Iterable[str | Path]) -> list[Path]:
    """Every file an input names: a file itself, a folder's supported files (recursive, sorted). Missing paths,
    unsupported files named directly and folders holding nothing supported raise DataError; duplicates are dropped."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*")) if _wanted(p, path)]
            if not found:
                raise DataError(f"{path}: no image, DICOM or video files found in this folder")
            files.extend(found)
        elif path.is_file():
            if kind(path) is None:
                raise DataError(f"{path}: unsupported file type; expected an image "
                                f"({', '.join(IMAGE_SUFFIXES)}), a DICOM file or a video ({', '.join(VIDEO_SUFFIXES)})")
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    unique: dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _wanted(path: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    return not hidden and path.is_file() and kind(path) is not None


# ---------------------------------------------------------------------------------------------------- reading


def read_frames(path: str | Path, max_pixels: int | None = None) -> Iterator[Frame]:
    """The frames of one file, one at a time (a long cine or video is never held in memory whole); with
    ``max_pixels``, a file declaring larger frames is refused (see :func:`check_pixels`) before any is decoded."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    if max_pixels is not None:
        check_pixels(path, max_pixels)
    which = kind(path)
    if which == "image":
        yield Frame(path, 0, read_image(path))
    elif which == "dicom":
        yield from read_dicom(path)
    elif which == "video":
        yield from read_video(path)
    else:
        raise DataError(f"{path}: unsupported file type (not an image, DICOM or video file)")


def read_image(path: Path) -> np.ndarray:
    """An image file as an array in RGB(A) order (grey stays 2-D), at its stored bit depth."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    return decode_image(data, path)


def decode_image(data: np.ndarray, path: Path, max_pixels: int | None = None) -> np.ndarray:
    """The bytes of an image file (uint8 array) decoded as :func:`read_image` does; ``path`` names it in errors;
    with ``max_pixels``, an image declaring more is refused before it is decoded."""
    if data.size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    if max_pixels is not None:
        check_pixels(path, max_pixels, data.tobytes())
    if data[:8].tobytes() == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-12:].tobytes():
        # checked here because libpng would print its own complaint to stderr before OpenCV gives up
        raise DataError(f"{path}: truncated PNG (the file ends before its IEND chunk)")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise DataError(f"{path}: not a readable image (corrupt, truncated, or not a {path.suffix or 'known'} file)")
    return bgr_to_rgb(image)


_LUMA = np.array([[19595, 38470, 7471]], np.float32) / np.float32(65536)
"""ITU-R 601 luma weights in PIL's 16-bit fixed point."""


def to_grey(image: np.ndarray) -> np.ndarray:
    """Any image array as 8-bit greyscale: RGB(A) by ITU-R 601 luma with PIL's integer rounding (alpha ignored),
    16-bit by /257 (full range to full range), other integer or float arrays clipped to [0, 255]."""
    array = check_image(image)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        levels = array[..., :3] if array.dtype == np.uint8 else to_grey_channels(array[..., :3])
        # PIL's (19595 R + 38470 G + 7471 B + 2^15) >> 16 in float32: every term and sum is a multiple of 2^-16
        # below 2^8, so float32 holds it exactly and one vectorised OpenCV call matches PIL's result bit for bit
        luma = cv2.transform(levels.astype(np.float32), _LUMA)
        return np.floor(luma + np.float32(0.5)).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return to_grey_channels(array).astype(np.uint8)


def check_image(image: np.ndarray) -> np.ndarray:
    """``image`` as an array, if it has the shape of a greyscale (H, W or H, W, 1), RGB or RGBA image."""
    array = np.asarray(image)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))) or array.size == 0:
        raise DataError(f"expected a greyscale, RGB or RGBA image, got an array of shape {array.shape}")
    return array


def to_grey_channels(array: np.ndarray) -> np.ndarray:
    """8-bit levels (as uint32) of any numeric array, channel by channel."""
    if array.dtype == np.uint8:
        return array.astype(np.uint32)
    if array.dtype == np.uint16:
        return np.rint(array / 257.0).astype(np.uint32)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"expected a numeric image, got dtype {array.dtype}")
    return np.clip(np.rint(np.nan_to_num(array.astype(np.float64))), 0, 255).astype(np.uint32)


def frames_from_bytes(data: bytes, name: str, max_pixels: int | None = None) -> Iterator[Frame]:
    """The frames of a file received in memory (an upload), one at a time: a DICOM (by its preamble or a .dcm name)
    or an image; with ``max_pixels``, the header is checked (see :func:`check_pixels`) before anything is decoded."""
    path = Path(name or "upload")
    if not data:
        raise DataError(f"{path}: empty file (0 bytes)")
    if max_pixels is not None:
        check_pixels(path, max_pixels, data)
    if is_dicom_bytes(data, path):
        yield from read_dicom(path, data)
    else:
        yield Frame(path, 0, decode_image(np.frombuffer(data, np.uint8), path))


def is_dicom_bytes(data: bytes, path: Path) -> bool:
    """Whether an in-memory file is a DICOM: its preamble, or a .dcm/.dicom name."""
    return data[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES


# ---------------------------------------------------------------------------------------------------- pixel budget


def check_pixels(path: Path, max_pixels: int, data: bytes | None = None) -> None:
    """Raise :class:`TooManyPixels` when the header of ``path`` (or of ``data``, the file in memory) declares frames
    of more than ``max_pixels`` pixels. Only the header is read: PNG's IHDR, JPEG's SOF, DICOM's Rows and Columns,
    a video's frame size, Pillow's lazy open for other images. A header that cannot be read passes: the decoder
    then gives its own error."""
    size = declared_size(path, data)
    if size is None:
        return
    pixels, shape, frames = size
    if pixels > max_pixels:
        cine = f" ({frames} frames)" if frames > 1 else ""
        raise TooManyPixels(f"{path}: declares {shape} ({pixels / 1e6:.1f} megapixels) per frame{cine}, over the "
                            f"budget of {max_pixels / 1e6:g} megapixels (--max-pixels)")


Declared = tuple[int, str, int]
"""Pixels per frame, the frame size as the header gives it ("W x H"), and the number of frames."""


def _declared(width: int, height: int, frames: int = 1) -> Declared:
    return width * height, f"{width} x {height}", frames


def declared_size(path: Path, data: bytes | None = None) -> Declared | None:
    """What the file's header declares (see :data:`Declared`), or None when it cannot be read."""
    try:
        return _declared_size(path, data)
    except OSError:  # unreadable: the reader says why
        return None


def _declared_size(path: Path, data: bytes | None) -> Declared | None:
    with open(path, "rb") if data is None else io.BytesIO(data) as fh:
        head = fh.read(132)
        fh.seek(0)
        if head[:8] == PNG_MAGIC and head[12:16] == b"IHDR":
            return _declared(int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
        if head[:2] == b"\xff\xd8":
            return _jpeg_size(fh) or _pillow_size(fh)
        if head[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES:
            return _dicom_size(fh)
    if data is None and kind(path) == "video":
        return _video_size(path)
    return _pillow_size(io.BytesIO(data) if data is not None else path)


def _jpeg_size(fh: Any) -> Declared | None:
    """Walk the JPEG's marker segments up to its start-of-frame, skipping the others by their length."""
    fh.seek(2)
    while len(segment := fh.read(4)) == 4 and segment[0] == 0xFF:
        if segment[1] in JPEG_SOF:
            sof = fh.read(5)  # precision, lines, samples per line
            height, width = int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big")
            return _declared(width, height) if height else None  # 0 lines: the height comes later, in a DNL segment
        fh.seek(int.from_bytes(segment[2:4], "big") - 2, 1)
    return None


def _pillow_size(source: Any) -> Declared | None:
    """The size Pillow's lazy open reads from the header (it decodes nothing until asked)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if hasattr(source, "seek"):
        source.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                return _declared(*image.size)
    except Image.DecompressionBombError as err:
        # Pillow refuses to open past its own limit, and says only the pixel count
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        return (int(pixels.group(1)), "a size beyond Pillow's own limit", 1) if pixels else None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def _dicom_size(fh: Any) -> Declared | None:
    import pydicom

    try:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        return _declared(int(ds.Columns), int(ds.Rows), int(ds.get("NumberOfFrames", 1) or 1))
    except Exception:  # pydicom raises many types for malformed files; the reader reports them
        return None


def _video_size(path: Path) -> Declared | None:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return None
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        frames = max(1, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        return _declared(width, height, frames) if width and height else None
    finally:
        capture.release()


def bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) channel order to RGB(A); grey arrays unchanged."""
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0]
    return image


def read_video(path: Path) -> Iterator[Frame]:
    """Every frame of a video file, in RGB."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DataError(f"{path}: cannot open as a video (not a video file, or a codec FFmpeg lacks)")
        index = 0
        while True:
            ok, image = capture.read()
            if not ok or image is None:
                break
            yield Frame(path, index, bgr_to_rgb(image), None, multiframe=True)
            index += 1
        if index == 0:
            raise DataError(f"{path}: no frame could be decoded (empty, corrupt or truncated video)")
    finally:
        capture.release()


# ---------------------------------------------------------------------------------------------------- DICOM


def read_dicom(path: Path, data: bytes | None = None) -> Iterator[Frame]:
    """Every frame of a DICOM file (or of its ``data``, read in memory) as 8-bit grey or RGB (see the module
    docstring for the mapping)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    source = path if data is None else io.BytesIO(data)
    try:
        ds = pydicom.dcmread(source, defer_size="256 KB")  # the pixels are decoded from the file frame by frame
    except InvalidDicomError as err:
        raise DataError(f"{path}: not a DICOM file ({err})") from None
    except Exception as err:  # pydicom raises several types for truncated or malformed files
        raise DataError(f"{path}: unreadable DICOM file ({type(err).__name__}: {err})") from None
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file holds no image (no Pixel Data element); "
                        f"modality {ds.get('Modality', '?')}, SOP class {ds.get('SOPClassUID', '?')}")
    spacing = dicom_spacing(ds)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    frames = _decoded_frames(path, ds, source)
    for index in range(count):
        try:
            pixels = next(frames)
        except StopIteration:
            raise DataError(f"{path}: Pixel Data holds {index} frames, NumberOfFrames says {count}") from None
        yield Frame(path, index, dicom_to_display(pixels, ds, photometric, path), spacing, multiframe=count > 1)


def _decoded_frames(path: Path, ds: Any, source: Path | io.BytesIO) -> Iterator[np.ndarray]:
    """Frames as pydicom decodes them (YBR converted to RGB), with decoding failures rephrased as DataError."""
    from pydicom.pixels import iter_pixels

    if isinstance(source, io.BytesIO):
        source.seek(0)
    iterator = iter_pixels(source)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except Exception as err:  # pydicom raises RuntimeError, ValueError, NotImplementedError, ...
            raise DataError(f"{path}: {pixel_error(ds, err)}") from None


def pixel_error(ds: Any, err: Exception) -> str:
    """Why the pixel data could not be decoded, naming the transfer syntax and any codec that is missing."""
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        return f"cannot decode the pixel data ({err})"
    name = f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"cannot decode the pixel data: transfer syntax {name} is not supported by pydicom"
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        return (f"cannot decode the pixel data: transfer syntax {name} needs a codec that is not installed "
                f"({missing}); install one, or convert the file to an uncompressed transfer syntax")
    return f"cannot decode the pixel data (transfer syntax {name}): {str(err).strip().splitlines()[-1].strip()}"


def dicom_spacing(ds: Any) -> tuple[float, float] | None:
    """(row, column) mm per pixel from the first ultrasound region measured in cm, else PixelSpacing, else None."""
    for region in ds.get("SequenceOfUltrasoundRegions", []) or []:
        units = (region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection"))
        dx, dy = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
        if units == (CM_UNITS, CM_UNITS) and dx and dy and float(dx) > 0 and float(dy) > 0:
            return (abs(float(dy)) * 10.0, abs(float(dx)) * 10.0)
    spacing = ds.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2 and all(float(v) > 0 for v in spacing):
        return (float(spacing[0]), float(spacing[1]))
    return None


def dicom_to_display(pixels: np.ndarray, ds: Any, photometric: str, path: Path) -> np.ndarray:
    """One decoded frame as 8-bit grey (H, W) or RGB (H, W, 3)."""
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        grey = grey_to_8bit(pixels, ds)
        return 255 - grey if photometric == "MONOCHROME1" else grey
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, ds)
    elif photometric not in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):
        raise DataError(f"{path}: unsupported Photometric Interpretation {photometric or '(missing)'}")
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise DataError(f"{path}: colour frame of shape {pixels.shape}; expected (rows, columns, 3)")
    if pixels.dtype == np.uint8:
        return pixels
    top = float(2 ** int(ds.get("BitsStored", 16)) - 1) if photometric != "PALETTE COLOR" else 65535.0
    return np.clip(np.rint(pixels.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def grey_to_8bit(pixels: np.ndarray, ds: Any) -> np.ndarray:
    """A grey frame after the modality LUT, mapped to 8 bits by the window, or kept, or stretched min..max."""
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(pixels, ds).astype(np.float64)
    window = first_window(ds)
    if window is not None:
        center, width = window
        # DICOM's linear VOI function; floor so that the usual 127.5/256 window leaves 8-bit data unchanged
        scaled = np.floor(((values - (center - 0.5)) / max(width - 1, 1e-9) + 0.5) * 255.0)
        return np.clip(scaled, 0, 255).astype(np.uint8)
    if values.size and values.min() >= 0 and values.max() <= 255:
        return np.rint(values).astype(np.uint8)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def first_window(ds: Any) -> tuple[float, float] | None:
    """The first (WindowCenter, WindowWidth) pair, when the file has one with a width of at least 1."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    center = center[0] if isinstance(center, Iterable) and not isinstance(center, str) else center
    width = width[0] if isinstance(width, Iterable) and not isinstance(width, str) else width
    try:
        center, width = float(center), float(width)
    except (TypeError, ValueError):
        return None
    return (center, width) if width >= 1 else None

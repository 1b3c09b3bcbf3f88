"""The viewer's server through Starlette's TestClient: health, uploads and their refusals, the live WebSocket and
the server-side sources; every answer is checked against the runtime on the same decoded image."""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from ultraseg.commands.viewer import server
from ultraseg.runtime import sources
from ultraseg.data.busi import read_image
from ultraseg.errors import DataError
from ultraseg.runtime import Segmenter

BENIGN = ("benign", "benign (1).webp")


def pick_thresholds(segmenter: Segmenter, image: np.ndarray) -> tuple[float, float]:
    """Two slider thresholds (steps of 0.01) with different, non-zero areas, the higher one the smallest such area:
    the tiny model is untrained, so its probabilities are arbitrary (and flat) and the thresholds come from them."""
    prob = segmenter.probability(image)[0]
    areas = {round(k / 100, 2): int((prob > k / 100).sum()) for k in range(100)}
    high = max(t for t, area in areas.items() if area > 0)
    low = max(t for t, area in areas.items() if area > areas[high])
    return low, high


def decode_mask(url: str) -> np.ndarray:
    """The mask an answer carries (an RGBA PNG data URL) as booleans: lesion pixels are opaque."""
    assert url.startswith("data:image/png;base64,")
    rgba = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    return rgba[..., 3] > 0


@pytest.fixture(scope="module")
def segmenter(zoo) -> Segmenter:
    return Segmenter(zoo.models / "pruned.int8.onnx")


@pytest.fixture(scope="module")
def client(segmenter):
    with TestClient(server.create_app(segmenter, max_upload_mb=2)) as client:
        yield client


@pytest.fixture(scope="module")
def busi_file(busi_mirror) -> Path:
    return busi_mirror.joinpath(*BENIGN)


@pytest.fixture(scope="module")
def busi_image(busi_file) -> np.ndarray:
    return read_image(busi_file)


def post_image(client: TestClient, path: Path, **params: float | str):
    return client.post("/segment", content=path.read_bytes(), params=params,
                       headers={"Content-Type": "image/webp"})


def dicom_bytes(frames: np.ndarray, spacing: float | None = None, cine_rate: int | None = None) -> bytes:
    """A minimal ultrasound DICOM file (8-bit MONOCHROME2; several frames make a cine), written in memory."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UltrasoundMultiFrameImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "US", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    if spacing:
        ds.PixelSpacing = [spacing, spacing]
    if cine_rate:
        ds.CineRate = cine_rate
    ds.PixelData = np.ascontiguousarray(frames, np.uint8).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------- page


def test_health_describes_the_model(client, segmenter):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model"] == str(segmenter.path)
    assert body["input_size"] == segmenter.size == 32
    assert body["postprocess"] == segmenter.postprocess.to_dict() and body["threshold"] == 0.5
    assert body["source"] is None and body["max_pixels"] == sources.MAX_PIXELS


def test_page_and_static_files_are_served_and_local(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="view"' in page.text
    for ref in re.findall(r'(?:src|href)="([^"]+)"', page.text):  # no CDN: everything from this server
        assert ref.startswith("/static/"), ref
        assert client.get(ref).status_code == 200
    assert "http" not in client.get("/static/app.js").text.replace("https:", "")  # nothing fetched from outside
    for element in ("fps", "area-px", "area-mm2", "latency-ms", "lesion", "score", "threshold", "overlay", "opacity",
                    "ood"):
        assert f'id="{element}"' in page.text


# ---------------------------------------------------------------------------------------------------- /segment


def test_upload_answers_what_the_runtime_says(client, segmenter, busi_file, busi_image):
    threshold = pick_thresholds(segmenter, busi_image)[1]
    expected = segmenter.segment(busi_image, threshold=threshold)
    response = post_image(client, busi_file, threshold=threshold)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["area_px"] == expected.area_px > 0 and body["lesion_present"] is True
    assert (body["in_distribution"], body["ood_reason"]) == (expected.in_distribution, expected.ood_reason)
    assert body["score"] == pytest.approx(expected.score) and body["bbox"] == list(expected.bbox)
    assert (body["width"], body["height"]) == busi_image.shape[::-1] and body["threshold"] == threshold
    assert np.array_equal(decode_mask(body["mask"]), expected.mask)
    assert 2 <= len(body["contour"]) <= server.CONTOUR_POINTS + 1 and body["area_mm2"] is None
    assert set(body["timings"]) >= {"preprocess_ms", "model_ms", "postprocess_ms", "decode_ms"}


def test_a_frame_that_is_not_a_scan_gets_no_lesion_answer(client):
    ok, png = cv2.imencode(".png", np.full((60, 80), 40, np.uint8))
    response = client.post("/segment", content=png.tobytes(), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["in_distribution"], body["ood_reason"]) == (False, "constant frame")
    assert body["lesion_present"] is False and body["area_px"] == 0 and body["contour"] == []


def test_threshold_changes_the_mask(client, segmenter, busi_file, busi_image):
    areas = []
    for threshold in pick_thresholds(segmenter, busi_image):
        body = post_image(client, busi_file, threshold=threshold).json()
        assert body["area_px"] == segmenter.segment(busi_image, threshold=threshold).area_px
        areas.append((body["area_px"], decode_mask(body["mask"]).sum()))
    assert areas[0][0] > areas[1][0] > 0 and areas[0][1] > areas[1][1]


def test_default_threshold_is_the_models(client, segmenter, busi_file, busi_image):
    body = post_image(client, busi_file).json()
    assert body["threshold"] == segmenter.postprocess.threshold
    assert body["area_px"] == segmenter.segment(busi_image).area_px


def test_multipart_upload_gives_the_same_answer(client, busi_file):
    raw = post_image(client, busi_file, threshold=0.3).json()
    files = {"file": (busi_file.name, busi_file.read_bytes(), "image/webp")}
    form = client.post("/segment", files=files, params={"threshold": 0.3}).json()
    assert form["area_px"] == raw["area_px"] and form["mask"] == raw["mask"]


def test_frame_is_returned_on_request(client, busi_file, busi_image):
    body = post_image(client, busi_file, frame="1").json()
    jpeg = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["frame"].split(",", 1)[1]))).convert("L"))
    assert jpeg.shape == busi_image.shape and np.abs(jpeg.astype(int) - busi_image).mean() < 3
    assert "frame" not in post_image(client, busi_file).json()


def test_dicom_upload_uses_its_pixel_spacing(client, segmenter, busi_image):
    threshold = pick_thresholds(segmenter, busi_image)[1]
    data = dicom_bytes(busi_image[None], spacing=0.1)
    response = client.post("/segment", content=data, params={"threshold": threshold},
                           headers={"Content-Type": "application/dicom"})
    body = response.json()
    expected = segmenter.segment(busi_image, threshold=threshold)
    assert response.status_code == 200 and body["area_px"] == expected.area_px > 0
    assert body["area_mm2"] == pytest.approx(expected.area_px * 0.01) and body["frames"] == 1


def test_spacing_query_gives_mm2(client, busi_file):
    body = post_image(client, busi_file, threshold=0.3, spacing="0.2,0.05").json()
    assert body["area_mm2"] == pytest.approx(body["area_px"] * 0.01)


def test_a_frame_over_the_pixel_budget_is_refused_with_413_from_its_header(segmenter, busi_file, busi_image):
    budget = busi_image.size - 1
    with TestClient(server.create_app(segmenter, max_pixels=budget)) as small:
        response = post_image(small, busi_file)
        dicom = small.post("/segment", content=dicom_bytes(busi_image[None]),
                           headers={"Content-Type": "application/dicom"})
        assert small.get("/health").json()["max_pixels"] == budget
    height, width = busi_image.shape
    assert response.status_code == 413 and response.json()["error"].startswith(f"upload: declares {width} x {height}")
    assert dicom.status_code == 413 and "--max-pixels" in dicom.json()["error"]


def test_oversize_upload_is_refused_with_413(client):
    response = client.post("/segment", content=b"\0" * (2 * 2**20 + 1), headers={"Content-Type": "image/png"})
    assert response.status_code == 413 and "2 MB" in response.json()["error"]


def test_oversize_upload_without_length_is_refused_while_reading(client):
    chunks = (b"\0" * 2**16 for _ in range(40))  # a chunked body: no Content-Length to trust
    response = client.post("/segment", content=chunks, headers={"Content-Type": "image/png"})
    assert response.status_code == 413 and "error" in response.json()


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", ""])
def test_wrong_content_type_is_refused_with_415(client, busi_file, content_type):
    response = client.post("/segment", content=busi_file.read_bytes(), headers={"Content-Type": content_type})
    assert response.status_code == 415 and "image" in response.json()["error"]


def test_wrong_part_type_in_a_form_is_refused_with_415(client):
    response = client.post("/segment", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert response.status_code == 415


@pytest.mark.parametrize("content_type", ["image/png", "application/dicom"])
def test_garbage_bytes_are_one_clear_400(client, content_type):
    response = client.post("/segment", content=b"not an image at all" * 20, headers={"Content-Type": content_type})
    assert response.status_code == 400
    expected = "upload.dcm: not a DICOM file" if content_type == "application/dicom" else "upload: not a readable"
    assert response.json()["error"].startswith(expected) and "\n" not in response.json()["error"]


@pytest.mark.parametrize("threshold", ["1.0", "-0.1", "abc"])
def test_bad_threshold_is_a_400(client, busi_file, threshold):
    response = post_image(client, busi_file, threshold=threshold)
    assert response.status_code == 400 and "threshold" in response.json()["error"]


def test_forms_are_held_to_one_file_and_the_size_limit(client, busi_file):
    data = busi_file.read_bytes()
    two = client.post("/segment", files=[("a", ("a.webp", data, "image/webp")), ("b", ("b.webp", data, "image/webp"))])
    assert two.status_code == 400 and "Too many files" in two.json()["error"]
    none = client.post("/segment", files={"note": (None, "a text field, no file")})
    assert none.status_code == 400 and none.json()["error"] == "multipart upload without a file"
    big = client.post("/segment", files={"file": ("big.png", b"\0" * (2 * 2**20 + 1), "image/png")})
    assert big.status_code == 413 and "2 MB" in big.json()["error"]


def test_uploads_are_never_spooled_to_disk(client, monkeypatch, tmp_path):
    """A form upload over 1 MB is where Starlette's own form parser would spill to a temporary file."""
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1100), dtype=np.uint8)
    png = cv2.imencode(".png", noise)[1].tobytes()
    assert 2**20 < len(png) < 2 * 2**20
    response = client.post("/segment", files={"file": ("noise.png", png, "image/png")})
    assert response.status_code == 200 and response.json()["width"] == 1100
    assert list(spool.iterdir()) == []


def test_contour_is_simplified_not_decimated():
    """A lesion with a jagged edge and straight borders: at most ~200 points that still outline it (decimating the
    vertices would cut the corners off and draw diagonals across the frame)."""
    rng = np.random.default_rng(0)
    edge = np.clip(150 + np.cumsum(rng.integers(-3, 4, 300)), 60, 250)
    mask = np.arange(320)[None, :] < edge[:, None]
    contour = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0][0][:, 0, :]
    assert len(contour) > 2 * server.CONTOUR_POINTS
    points = server.subsample(contour)
    drawn = cv2.fillPoly(np.zeros(mask.shape, np.uint8), [np.array(points, np.int32)], 1).astype(bool)
    assert len(points) <= server.CONTOUR_POINTS
    assert (drawn & mask).sum() / (drawn | mask).sum() > 0.97


# ---------------------------------------------------------------------------------------------------- /ws


def test_websocket_answers_each_frame(client, segmenter, busi_image):
    jpeg = cv2.imencode(".jpg", busi_image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)))
    low, high = pick_thresholds(segmenter, busi_image)
    with client.websocket_connect("/ws") as ws:
        answers = []
        for threshold in (low, high):
            ws.send_text(json.dumps({"threshold": threshold}))
            ws.send_bytes(jpeg)
            answers.append(ws.receive_json())
    for answer, threshold in zip(answers, (low, high)):
        assert answer["area_px"] == segmenter.segment(decoded, threshold=threshold).area_px
        assert answer["threshold"] == threshold and answer["width"] == busi_image.shape[1]
    assert answers[0]["area_px"] != answers[1]["area_px"]


def test_websocket_survives_a_bad_frame(client):
    good = cv2.imencode(".png", np.full((40, 60), 90, np.uint8))[1].tobytes()
    with client.websocket_connect("/ws") as ws:
        ws.send_bytes(b"garbage")
        assert "not a readable image" in ws.receive_json()["error"]
        ws.send_text("not json")  # ignored: the threshold stays
        ws.send_bytes(good)
        assert ws.receive_json()["width"] == 60


# ---------------------------------------------------------------------------------------------------- /source


def source_answers(segmenter: Segmenter, spec: str, count: int, threshold: float) -> list[dict]:
    with TestClient(server.create_app(segmenter, source=spec)) as client:
        assert client.get("/health").json()["source"] == spec
        with client.websocket_connect("/source") as ws:
            answers = []
            for _ in range(count):
                ws.send_text(json.dumps({"threshold": threshold}))
                answers.append(ws.receive_json())
    return answers


def test_folder_source_plays_in_a_loop(segmenter, busi_mirror, tmp_path):
    names = ["benign (1).webp", "benign (2).webp"]
    for name in names:
        (tmp_path / name).write_bytes((busi_mirror / "benign" / name).read_bytes())
    (tmp_path / "notes.txt").write_text("not an image: skipped")
    (tmp_path / "benign (1)_mask.png").write_bytes((busi_mirror / "benign" / "benign (1)_mask.png").read_bytes())
    answers = source_answers(segmenter, str(tmp_path), 3, 0.3)
    images = [read_image(tmp_path / name) for name in names]
    for answer, image in zip(answers, images + images[:1]):
        assert answer["area_px"] == segmenter.segment(image, threshold=0.3).area_px
        assert (answer["width"], answer["height"]) == image.shape[::-1]
        assert answer["frame"].startswith("data:image/jpeg;base64,")


def test_cine_dicom_source_plays_its_frames_in_a_loop(segmenter, tmp_path):
    rng = np.random.default_rng(1)
    frames = np.stack([rng.integers(0, 256, (48, 64), dtype=np.uint8) for _ in range(3)])
    path = tmp_path / "cine"  # no suffix: recognised by its DICM magic
    path.write_bytes(dicom_bytes(frames, spacing=0.2, cine_rate=100))
    answers = source_answers(segmenter, str(path), 4, 0.5)
    for answer, frame in zip(answers, [*frames, frames[0]]):
        expected = segmenter.segment(frame, threshold=0.5)
        assert answer["area_px"] == expected.area_px and answer["score"] == pytest.approx(expected.score)
        assert answer["area_mm2"] == pytest.approx(expected.area_px * 0.04)


def test_video_file_source_plays_in_a_loop(segmenter, busi_image, tmp_path):
    path = tmp_path / "clip.avi"
    frames = [cv2.resize(busi_image, (160, 120)), cv2.resize(busi_image[::-1], (160, 120))]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 100, (160, 120), isColor=True)
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    capture = cv2.VideoCapture(str(path))
    decoded = [cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) for _ in frames]
    capture.release()
    answers = source_answers(segmenter, str(path), 3, 0.3)
    for answer, frame in zip(answers, decoded + decoded[:1]):
        assert answer["area_px"] == segmenter.segment(frame, threshold=0.3).area_px
    assert answers[0]["area_px"] != answers[1]["area_px"] or answers[0]["score"] != answers[1]["score"]


def test_source_websocket_without_a_source_says_so(client):
    with client.websocket_connect("/source") as ws:
        assert "no --source" in ws.receive_json()["error"]


@pytest.mark.parametrize("spec", ["missing.mp4", "empty-folder"])
def test_bad_sources_are_refused_clearly(tmp_path, spec):
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(DataError, match=re.escape(str(tmp_path / spec))):
        server.open_source(str(tmp_path / spec))


# ---------------------------------------------------------------------------------------------------- command


def serve_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ultraseg")
    server.add_parser(ap.add_subparsers(dest="command"))
    return ap


def test_serve_options_and_defaults():
    args = serve_parser().parse_args(["serve", "model.onnx"])
    assert (args.host, args.port, args.source, args.threads, args.max_upload_mb) == ("127.0.0.1", 8000, None, 1, 20)
    assert args.run is server.run and args.max_pixels == sources.MAX_PIXELS
    args = serve_parser().parse_args(["serve", "m.onnx", "--port", "9000", "--source", "/dev/video0",
                                      "--max-upload-mb", "5", "--max-pixels", "1000000"])
    assert (args.port, args.source, args.max_upload_mb, args.max_pixels) == (9000, "/dev/video0", 5, 1_000_000)
    with pytest.raises(SystemExit):
        serve_parser().parse_args(["serve", "m.onnx", "--max-pixels", "0"])


def test_serve_help_explains_the_options(capsys):
    with pytest.raises(SystemExit):
        serve_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--source", "--threads", "--max-upload-mb", "--max-pixels", "/dev/video",
                   "DICOM"):
        assert option in text


def test_serve_reports_a_missing_model_without_starting(tmp_path, capsys):
    args = serve_parser().parse_args(["serve", str(tmp_path / "none.onnx")])
    assert args.run(args) == 2
    assert "model file not found" in capsys.readouterr().err


def test_serve_reports_a_bad_source_without_starting(zoo, tmp_path, capsys):
    args = serve_parser().parse_args(["serve", str(zoo.models / "pruned.int8.onnx"), "--source",
                                      str(tmp_path / "nothing")])
    assert args.run(args) == 2
    assert "no such camera, file or folder" in capsys.readouterr().err


def test_a_16bit_monochrome1_dicom_gets_the_answer_predict_gives(client, segmenter, busi_image, tmp_path):
    """The viewer reads files with ultraseg.runtime.sources, as the command line does: one answer per file."""
    from tests.runtime.test_sources import write_dicom

    path = write_dicom(tmp_path / "scan.dcm", (255 - busi_image).astype(np.uint16) * 40, photometric="MONOCHROME1")
    (frame,) = sources.read_frames(path)
    threshold = pick_thresholds(segmenter, frame.image)[0]
    expected = segmenter.segment(frame.image, threshold=threshold).area_px
    response = client.post(f"/segment?threshold={threshold}", content=path.read_bytes(),
                           headers={"Content-Type": "application/dicom"})
    assert response.status_code == 200, response.text
    assert response.json()["area_px"] == expected > 0


def test_websocket_smooths_the_decision_per_connection(zoo, busi_image):
    """A stream's lesion decision changes only after the file's debounce count of disagreeing frames, and each
    connection starts afresh."""
    from ultraseg.params import StreamParams

    smoothed = Segmenter(zoo.models / "pruned.int8.onnx", stream=StreamParams("debounce", 3, 0.5))
    low, _ = pick_thresholds(smoothed, busi_image)
    none = 0.999
    if smoothed.probability(busi_image)[0].max() >= none:
        pytest.skip("the untrained test model is too sure of this image for a lesion-free threshold")
    png = cv2.imencode(".png", busi_image)[1].tobytes()

    def decisions(thresholds):
        with TestClient(server.create_app(smoothed)) as client, client.websocket_connect("/ws") as ws:
            out = []
            for threshold in thresholds:
                ws.send_text(json.dumps({"threshold": threshold}))
                ws.send_bytes(png)
                out.append(ws.receive_json()["lesion_present"])
            return out

    assert decisions([low, none, none, none]) == [True, True, True, False]
    assert decisions([none, low]) == [False, False]

"""Raster intake on real chest X-rays and on deliberately broken files."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.intake import DecodedImage, IntakeError, decode_bytes, decode_file


@pytest.fixture(scope="module")
def xray_jpeg(datasets: Path) -> Path:
    files = sorted((datasets / "chest-xray" / "fullres-samples" / "NORMAL").glob("*.jpeg"))
    if not files:
        pytest.skip("no full-resolution chest X-ray samples in the datasets folder")
    return files[0]


@pytest.fixture(scope="module")
def xray_gray(xray_jpeg: Path) -> np.ndarray:
    """A real radiograph, cropped to keep the encode/decode round trips light."""
    img = cv2.imread(str(xray_jpeg), cv2.IMREAD_GRAYSCALE)
    return np.ascontiguousarray(img[:600, :700])


def _png_with_ihdr(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _decode_error(tmp_path: Path, name: str, data: bytes) -> IntakeError:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(IntakeError) as info:
        decode_file(path)
    assert info.value.source == str(path)
    assert str(info.value) == f"{path}: {info.value.reason}"
    return info.value


@pytest.mark.parametrize("group", ["NORMAL", "PNEUMONIA"])
def test_real_fullres_jpegs_decode(datasets: Path, group: str) -> None:
    for path in sorted((datasets / "chest-xray" / "fullres-samples" / group).glob("*.jpeg"))[:4]:
        img = decode_file(path)
        assert img.source_format == "jpeg"
        assert img.pixels.dtype == np.uint8
        assert img.pixels.shape[:2] == img.original_size
        assert min(img.original_size) >= 500
        assert img.modality is None and img.frame is None and img.frames == 1
        assert img.pixels.std() > 10


def test_train_jpeg_decodes_as_rgb_order(datasets: Path) -> None:
    path = next((datasets / "chest-xray" / "train" / "NORMAL").glob("*.jpeg"), None)
    if path is None:
        pytest.skip("no train images")
    img = decode_file(path)
    expected = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert img.pixels.shape == (224, 224, 3)
    assert np.array_equal(img.pixels, expected)


def test_decode_bytes_matches_decode_file(xray_jpeg: Path) -> None:
    from_bytes = decode_bytes(xray_jpeg.read_bytes(), "upload.bin")
    assert np.array_equal(from_bytes.pixels, decode_file(xray_jpeg).pixels)


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_8bit_lossless_round_trip(tmp_path: Path, xray_gray: np.ndarray, ext: str) -> None:
    path = tmp_path / f"x{ext}"
    cv2.imwrite(str(path), xray_gray)
    img = decode_file(path)
    assert img.source_format == ext[1:]
    assert img.pixels.dtype == np.uint8 and img.bits_stored == 8
    assert np.array_equal(img.pixels, xray_gray)


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_16bit_scaled_to_unit_float(tmp_path: Path, xray_gray: np.ndarray, ext: str) -> None:
    path = tmp_path / f"x16{ext}"
    cv2.imwrite(str(path), xray_gray.astype(np.uint16) * 257)
    img = decode_file(path)
    assert img.pixels.dtype == np.float32 and img.bits_stored == 16
    np.testing.assert_allclose(img.pixels, xray_gray / 255.0, atol=1e-6)
    assert any("16-bit" in note for note in img.notes)


def test_extension_is_ignored(tmp_path: Path, xray_gray: np.ndarray) -> None:
    path = tmp_path / "really_a_png.jpg"
    cv2.imwrite(str(path.with_suffix(".png")), xray_gray)
    path.with_suffix(".png").rename(path)
    assert decode_file(path).source_format == "png"


def test_rgba_png_drops_alpha_and_is_rgb_order(tmp_path: Path, xray_gray: np.ndarray) -> None:
    bgra = np.dstack([xray_gray, xray_gray // 2, xray_gray // 3, np.full_like(xray_gray, 77)])
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    img = decode_file(tmp_path / "rgba.png")
    assert img.pixels.shape == (*xray_gray.shape, 3)
    assert np.array_equal(img.pixels[..., 0], xray_gray // 3)  # R came from OpenCV's third (red) plane
    assert np.array_equal(img.pixels[..., 2], xray_gray)


def test_palette_png_becomes_rgb(tmp_path: Path) -> None:
    """A 4x4 palette PNG written by hand (colour type 3): two palette entries, red and blue."""
    width = height = 4
    rows = b"".join(b"\x00" + bytes([0, 1, 0, 1]) for _ in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + chunk(b"PLTE", bytes([255, 0, 0, 0, 0, 255]))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    img = decode_bytes(data, "palette.png")
    assert img.pixels.shape == (4, 4, 3)
    assert tuple(img.pixels[0, 0]) == (255, 0, 0) and tuple(img.pixels[0, 1]) == (0, 0, 255)


def test_empty_file(tmp_path: Path) -> None:
    assert _decode_error(tmp_path, "empty.jpg", b"").kind == "empty"


def test_truncated_jpeg(tmp_path: Path, xray_jpeg: Path) -> None:
    data = xray_jpeg.read_bytes()
    err = _decode_error(tmp_path, "half.jpeg", data[: len(data) // 2])
    assert err.kind == "truncated" and "JPEG" in err.reason


def test_jpeg_missing_only_its_end_marker(tmp_path: Path, xray_jpeg: Path) -> None:
    """The case OpenCV may 'decode' by padding with grey."""
    err = _decode_error(tmp_path, "noeoi.jpeg", xray_jpeg.read_bytes()[:-2])
    assert err.kind == "truncated"


def test_truncated_png(tmp_path: Path, xray_gray: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", xray_gray)
    data = buf.tobytes()
    err = _decode_error(tmp_path, "half.png", data[: len(data) // 2])
    assert err.kind == "truncated" and "PNG" in err.reason


@pytest.mark.parametrize("name", ["notes.jpg", "notes.dcm", "notes.png"])
def test_text_file_with_image_extension(tmp_path: Path, name: str) -> None:
    err = _decode_error(tmp_path, name, b"Patient notes: chest X-ray requested.\n" * 40)
    assert err.kind == "not_an_image"


def test_random_bytes(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    assert _decode_error(tmp_path, "noise.bin", b"\x41" + data).kind == "not_an_image"


def test_other_image_format_is_unsupported(tmp_path: Path) -> None:
    assert _decode_error(tmp_path, "x.gif", b"GIF89a" + bytes(100)).kind == "unsupported"


def test_png_bomb_refused_from_header(tmp_path: Path) -> None:
    start = time.perf_counter()
    err = _decode_error(tmp_path, "bomb.png", _png_with_ihdr(100_000, 100_000))
    assert err.kind == "too_large" and "100000x100000" in err.reason
    assert time.perf_counter() - start < 0.5


def test_zero_size_png_header(tmp_path: Path) -> None:
    assert _decode_error(tmp_path, "zero.png", _png_with_ihdr(0, 10)).kind == "undecodable"


def test_jpeg_bomb_refused_from_sof(xray_jpeg: Path) -> None:
    data = bytearray(xray_jpeg.read_bytes())
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    with pytest.raises(IntakeError) as info:
        decode_bytes(bytes(data), "huge.jpeg")
    assert info.value.kind == "too_large"


def test_tiff_bomb_refused_from_ifd(tmp_path: Path, xray_gray: np.ndarray) -> None:
    ok, buf = cv2.imencode(".tiff", xray_gray)
    data = buf.tobytes()
    with pytest.raises(IntakeError) as info:
        decode_bytes(_patch_tiff_width(data, 40_000), "huge.tiff")
    assert info.value.kind == "too_large"


def _patch_tiff_width(data: bytes, width: int) -> bytes:
    """Rewrite the ImageWidth entry of the first IFD of a little-endian TIFF."""
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    out = bytearray(data)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, typ = struct.unpack_from("<HH", data, entry)
        if tag == 256:
            struct.pack_into("<HHII", out, entry, 256, 4, 1, width)
    return bytes(out)


def test_file_over_byte_limit_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import device.intake as intake

    monkeypatch.setattr(intake, "MAX_FILE_BYTES", 1000)
    path = tmp_path / "big.png"
    path.write_bytes(b"\x00" * 2000)
    with pytest.raises(IntakeError) as info:
        intake.decode_file(path)
    assert info.value.kind == "too_large"


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(IntakeError) as info:
        decode_file(tmp_path / "nope.jpg")
    assert info.value.kind == "unreadable"


def test_corrupt_png_caught_by_crc_and_prints_nothing(tmp_path: Path, xray_gray: np.ndarray, capfd: pytest.CaptureFixture) -> None:
    ok, buf = cv2.imencode(".png", xray_gray)
    data = bytearray(buf.tobytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # corrupt IDAT, chunk structure intact
    with pytest.raises(IntakeError) as info:
        decode_bytes(bytes(data), "corrupt.png")
    assert info.value.kind == "undecodable" and "checksum" in info.value.reason
    assert capfd.readouterr().err == ""


def test_decoded_image_is_frozen(xray_jpeg: Path) -> None:
    img = decode_file(xray_jpeg)
    assert isinstance(img, DecodedImage)
    with pytest.raises(AttributeError):
        img.frames = 2  # type: ignore[misc]

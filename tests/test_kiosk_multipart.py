"""The kiosk's fast multipart parser gives exactly what Werkzeug's parser gives, and refuses what it refuses."""

from __future__ import annotations

import io

import pytest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import MultiPartParser

from device.kiosk.multipart import parse_multipart

BOUNDARY = b"----bedside7MA4YWxkTrZu0gW"


def body(*parts: tuple[str, str | None, bytes], preamble: bytes = b"", boundary: bytes = BOUNDARY) -> bytes:
    out = preamble
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n"
        if filename is not None:
            out += b"Content-Type: image/jpeg\r\n"
        out += b"\r\n" + content + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def werkzeug(data: bytes):
    parser = MultiPartParser(stream_factory=lambda *args, **kwargs: io.BytesIO())
    form, files = parser.parse(io.BytesIO(data), BOUNDARY, len(data))
    return form, files


def same(data: bytes) -> None:
    form, files = parse_multipart(data, BOUNDARY)
    ref_form, ref_files = werkzeug(data)
    assert list(form.items(multi=True)) == list(ref_form.items(multi=True))
    assert [(k, f.filename, f.content_type, f.read()) for k, f in files.items(multi=True)] == [
        (k, f.filename, f.content_type, f.read()) for k, f in ref_files.items(multi=True)
    ]


# Binary image data that contains CRLF, dashes and a near-miss of the boundary.
TRICKY = b"\xff\xd8\x00\r\n--" + BOUNDARY[:-1] + b"\r\n\r\n--\xff\xd9" * 50


@pytest.mark.parametrize(
    "data",
    [
        body(("file", "chest.jpeg", TRICKY), ("exam", None, b"chest-xray-pneumonia"), ("reference", None, b"Bed 7")),
        body(("reference", None, "Zimmer \u00fc 3".encode()), ("file", "r\u00f6ntgen; 1.dcm", b"DICM" * 100)),
        body(("file", "", b"")),
        body(("a", None, b"1"), ("a", None, b"2")),
        body(("file", "x.png", b"\x89PNG" + b"\r\n" * 1000), preamble=b"ignored preamble\r\n"),
    ],
    ids=["binary-with-near-miss", "unicode-names", "empty-file", "repeated-field", "preamble"],
)
def test_same_result_as_werkzeug(data):
    same(data)


@pytest.mark.parametrize(
    "data",
    [
        b"no boundary at all",
        body(("file", "x.jpeg", b"abc"))[:-20],  # truncated: no closing delimiter
        b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"x\"\r\n",  # headers never end
        b"--" + BOUNDARY + b"\r\nNot a header line\r\n\r\nx\r\n--" + BOUNDARY + b"--",
        b"--" + BOUNDARY + b"\r\nContent-Disposition: attachment\r\n\r\nx\r\n--" + BOUNDARY + b"--",
    ],
    ids=["no-boundary", "truncated", "endless-headers", "bad-header", "not-form-data"],
)
def test_malformed_bodies_are_refused(data):
    with pytest.raises(ValueError):
        parse_multipart(data, BOUNDARY)


@pytest.mark.parametrize("charset", ["x-nope", "utf-16", "ISO-8859-1", "us-ascii"])
def test_field_charsets_as_werkzeug_reads_them(charset):
    """Only ascii, us-ascii, utf-8 and iso-8859-1 are honoured; anything else (unknown or not) is UTF-8."""
    data = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="reference"\r\n'
            b"Content-Type: text/plain; charset=" + charset.encode() + b"\r\n\r\nBett \xc3\xbc 7\r\n--"
            + BOUNDARY + b"--\r\n")
    same(data)


def test_empty_part_written_without_its_own_crlf_as_werkzeug_encodes_it():
    data = (b"\r\n--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="e.png"\r\n'
            b"Content-Type: image/png\r\n\r\n--" + BOUNDARY + b"--\r\n")
    same(data)
    assert parse_multipart(data, BOUNDARY)[1]["file"].read() == b""


def test_empty_part_without_its_own_crlf_followed_by_more_parts():
    data = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="e.png"\r\n'
            b"Content-Type: image/png\r\n\r\n--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="reference"'
            b"\r\n\r\nBed 7\r\n\r\n--" + BOUNDARY + b"--\r\n")
    same(data)
    form, files = parse_multipart(data, BOUNDARY)
    assert files["file"].read() == b"" and form["reference"] == "Bed 7\r\n"


def test_limits_on_parts_and_field_size():
    with pytest.raises(RequestEntityTooLarge):
        parse_multipart(body(*[("f", None, b"x")] * 5), BOUNDARY, max_parts=4)
    with pytest.raises(RequestEntityTooLarge):
        parse_multipart(body(("reference", None, b"x" * 100)), BOUNDARY, max_field_bytes=99)
    form, _ = parse_multipart(body(("reference", None, b"x" * 99)), BOUNDARY, max_field_bytes=99)
    assert form["reference"] == "x" * 99

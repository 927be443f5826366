"""The decode budget: how much memory one image may make the decoder commit, checked before it does.

Compressed formats let a small file claim a huge image (a 570 KB PNG of 10000x10000 16-bit RGB
pixels) or a huge dataset (a deflated DICOM that inflates a thousandfold). The absolute limits in
decoded.py only stop absurd headers; this budget is the appliance's real limit, set in the kiosk's
config (``[decode]``): megapixels and frames read from the header, the decoded pixel buffer those
imply, and the bytes an inflating stream may produce, counted while it inflates.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from device.intake.errors import TOO_LARGE, TRUNCATED, UNDECODABLE, IntakeError

# Inflate at most this much per step, so the running total is checked before more is produced.
_INFLATE_CHUNK = 4 * 2**20


@dataclass(frozen=True)
class DecodeBudget:
    max_megapixels: float = 50.0
    max_frames: int = 1000
    max_inflated_mb: int = 200

    @property
    def max_inflated_bytes(self) -> int:
        return self.max_inflated_mb * 2**20

    def check_image(self, source: str, height: int, width: int, samples: int, sample_bytes: int,
                    frames: int = 1) -> None:
        """Refuse, from the header alone, an image whose decode would exceed the budget."""
        if height * width > self.max_megapixels * 1e6:
            raise IntakeError(
                source, f"image is {width}x{height} px ({height * width / 1e6:.0f} megapixels); this kiosk "
                f"decodes at most {self.max_megapixels:g} megapixels (decode.max_megapixels)", TOO_LARGE,
            )
        if frames > self.max_frames:
            raise IntakeError(
                source, f"image has {frames} frames; this kiosk accepts at most {self.max_frames} "
                "(decode.max_frames)", TOO_LARGE,
            )
        decoded = height * width * samples * sample_bytes
        if decoded > self.max_inflated_bytes:
            raise IntakeError(
                source, f"one decoded frame would take {decoded / 2**20:.0f} MiB; this kiosk decodes at most "
                f"{self.max_inflated_mb} MiB (decode.max_inflated_mb)", TOO_LARGE,
            )

    def inflate(self, source: str, data: bytes) -> bytes:
        """A raw deflate stream inflated, refused as soon as it passes max_inflated_mb (before the
        memory is committed, not after)."""
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        pieces, total, pending = [], 0, data
        try:
            while not inflater.eof:
                piece = inflater.decompress(pending, _INFLATE_CHUNK)
                total += len(piece)
                if total > self.max_inflated_bytes:
                    raise IntakeError(
                        source, f"the deflated data inflates to more than {self.max_inflated_mb} MiB, this "
                        "kiosk's limit (decode.max_inflated_mb)", TOO_LARGE,
                    )
                pieces.append(piece)
                pending = inflater.unconsumed_tail
                if not piece and not pending:
                    break  # the input ran out before the stream's end
        except zlib.error as exc:
            raise IntakeError(source, f"corrupt deflated data: {exc}", UNDECODABLE) from None
        if not inflater.eof:
            raise IntakeError(source, "truncated deflated data: the stream ends early", TRUNCATED)
        return b"".join(pieces)


DEFAULT_BUDGET = DecodeBudget()

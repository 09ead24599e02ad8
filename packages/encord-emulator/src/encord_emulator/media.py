"""Signed media URLs and the bytes behind them, so a client can fetch what a label row shows.

A `labelrow` GET with `get_signed_url: true` (the SDK's `initialise_labels(include_signed_url=True)`)
answers rows whose image data units (images, image-group members) have `data_link` set to a signed URL of
this server, and whose DICOM frames carry the slice metadata Encord sends for a DICOM series
(`labels[<frame>].metadata`: `dicom_instance_uid`, `file_uri` = a signed URL, `width`, `height`), and
whose videos have `data_link` set to a signed URL of an MP4. Other data types (audio, text, PDF, NIfTI)
keep their links: their bytes are not emulated.

`GET /__media/<project>/<data_hash>/<frame>.<ext>?w=W&h=H&expires=T&signature=S` answers deterministic
bytes of the asked size: a PNG (`.png`), a baseline JPEG (`.jpg`), or a minimal DICOM file (`.dcm`, 8-bit
MONOCHROME2), the pixel values derived from the data hash and frame; stdlib only (zlib, struct). A video
(`video.mp4?...&n=FRAMES&fps=FPS`) is an MPEG-4 Part 2 MP4 made with PyAV (imported only then; 501 without
it) whose frame k is uniformly grey (`video_level(k)`), so a client can tell which frame it decoded. A URL
whose signature does not match or whose `expires` passed answers 403, like a presigned S3 URL. Every
media request is counted (`MediaServer.requests`), and `fail(data_hash, status)` makes one data unit's
URLs answer an error, for tests of failed downloads.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import orjson

MEDIA_PREFIX = "/__media/"
SIGNED_URL_TTL_S = 3600
_IMAGE_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/jpg": "jpg"}
_DICOM_MIME = "application/dicom"
_VIDEO_MIMES = frozenset({"video/mp4"})

Answer = tuple[int, bytes, dict[str, str]]


class MediaServer:
    """Signs media URLs for one emulator (a secret of its own) and answers them."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._secret = secrets.token_bytes(32)
        self._now = now
        self._lock = threading.Lock()
        self._failing: dict[str, int] = {}
        self._videos: dict[str, bytes] = {}  # encoding one costs about a second: once per URL path
        self.requests: list[str] = []  # the path of every media request, in order

    # ---- signing --------------------------------------------------------------------------------

    def _signature(self, path: str, query: str) -> str:
        return hmac.new(self._secret, f"{path}\n{query}".encode(), hashlib.sha256).hexdigest()

    def signed_url(
        self, base: str, project: str, data_hash: str, name: str, width: int, height: int, **extra: int
    ) -> str:
        path = f"{MEDIA_PREFIX}{quote(project, safe='')}/{quote(data_hash, safe='')}/{name}"
        params = {"w": width, "h": height, **extra, "expires": int(self._now()) + SIGNED_URL_TTL_S}
        query = "&".join(f"{key}={value}" for key, value in params.items())
        return f"{base}{path}?{query}&signature={self._signature(path, query)}"

    def sign_row(self, base: str, project: str, raw: bytes) -> bytes:
        """A served label row (its JSON bytes) with signed links, as described in the module docstring."""
        row: dict[str, Any] = orjson.loads(raw)
        frames = _classification_frames(row)
        for unit in (row.get("data_units") or {}).values():
            mime = str(unit.get("data_type") or "")
            width, height = int(unit.get("width") or 0), int(unit.get("height") or 0)
            data_hash = str(unit["data_hash"])
            if mime in _IMAGE_EXTENSIONS:
                name = f"0.{_IMAGE_EXTENSIONS[mime]}"
                unit["data_link"] = self.signed_url(base, project, data_hash, name, width, height)
            elif mime in _VIDEO_MIMES:
                fps = float(unit.get("data_fps") or 25.0)
                labelled = [int(k) + 1 for k in unit.get("labels") or {}] + [f + 1 for f in frames]
                count = max([round(fps * float(unit.get("data_duration") or 0)), *labelled, 1])
                unit["data_link"] = self.signed_url(
                    base, project, data_hash, "video.mp4", width, height, n=count, fps=max(1, round(fps))
                )
            elif mime == _DICOM_MIME:
                labels = unit.setdefault("labels", {})
                for frame in sorted({*(int(k) for k in labels), *frames}):
                    label = labels.setdefault(str(frame), {"objects": [], "classifications": []})
                    label["metadata"] = {
                        "dicom_instance_uid": f"1.2.826.0.1.3680043.10.1.{int(data_hash[:8], 16)}.{frame}",
                        "multiframe_frame_number": None,
                        "file_uri": self.signed_url(base, project, data_hash, f"{frame}.dcm", width, height),
                        "width": width,
                        "height": height,
                    }
        return orjson.dumps(row)

    # ---- serving --------------------------------------------------------------------------------

    def fail(self, data_hash: str, status: int = 500) -> None:
        """Make every URL of `data_hash` answer `status` (0: answer normally again)."""
        with self._lock:
            if status:
                self._failing[data_hash] = status
            else:
                self._failing.pop(data_hash, None)

    def answer(self, method: str, target: str) -> Answer:
        split = urlsplit(target)
        with self._lock:
            self.requests.append(split.path)
        if method not in ("GET", "HEAD"):
            return _text(405, "method not allowed")
        signed, _, signature = split.query.rpartition("&signature=")
        query = {key: values[0] for key, values in parse_qs(signed).items()}
        try:
            width, height, expires = int(query["w"]), int(query["h"]), int(query["expires"])
        except (KeyError, ValueError):
            return _text(403, "not a signed media URL")
        if not hmac.compare_digest(signature, self._signature(split.path, signed)):
            return _text(403, "signature does not match")
        if expires < self._now():
            return _text(403, "signed URL expired")
        parts = [unquote(p) for p in split.path[len(MEDIA_PREFIX) :].split("/")]
        if len(parts) != 3:
            return _text(404, "no such media")
        data_hash, name = parts[1], parts[2]
        frame_text, _, ext = name.partition(".")
        with self._lock:
            failing = self._failing.get(data_hash)
        if failing:
            return _text(failing, f"injected media fault: HTTP {failing}")
        seed = hashlib.sha256(f"{data_hash}/{frame_text}".encode()).digest()
        if ext == "png":
            return 200, png_bytes(width, height, (seed[0], seed[1], seed[2])), {"Content-Type": "image/png"}
        if ext == "jpg":
            return 200, jpeg_bytes(width, height, seed[0]), {"Content-Type": "image/jpeg"}
        if ext == "dcm":
            return 200, dicom_bytes(width, height, seed[0]), {"Content-Type": _DICOM_MIME}
        if name == "video.mp4":
            return self._video(split.path, width, height, int(query.get("n", 1)), int(query.get("fps", 25)))
        return _text(404, "no such media")

    def _video(self, path: str, width: int, height: int, frames: int, fps: int) -> Answer:
        with self._lock:
            body = self._videos.get(path)
        if body is None:
            try:
                body = mp4_bytes(width, height, frames, fps)
            except ImportError:
                return _text(501, "serving a video needs PyAV (pip install av)")
            with self._lock:
                self._videos[path] = body
        return 200, body, {"Content-Type": "video/mp4"}


def _text(status: int, message: str) -> Answer:
    return status, message.encode(), {"Content-Type": "text/plain"}


def _classification_frames(row: Mapping[str, Any]) -> set[int]:
    frames: set[int] = set()
    for answer in (row.get("classification_answers") or {}).values():
        for start, end in answer.get("range") or []:
            frames.update(range(int(start), int(end) + 1))
    return frames


# ---- image bytes ------------------------------------------------------------------------------------


def png_bytes(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A PNG of one colour (8-bit RGB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width  # filter type 0 per scanline
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(row * height, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def jpeg_bytes(width: int, height: int, grey: int) -> bytes:
    """A baseline greyscale JPEG of one grey level.

    With a quantisation table of ones, a uniform 8x8 block has one coefficient, DC = 8 * (grey - 128);
    DC is coded as the difference to the previous block, so only the first block carries a value and
    every later one is "difference 0, end of block". The Huffman tables are minimal: 12 four-bit DC
    codes (categories 0-11) and one one-bit AC code (end of block)."""
    dc = 8 * (grey - 128)
    category = abs(dc).bit_length()
    bits = [f"{category:04b}"]
    if category:
        bits.append(f"{dc if dc > 0 else dc + (1 << category) - 1:0{category}b}")
    bits.append("0")  # end of block
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    stream = "".join(bits) + "00000" * (blocks - 1)
    stream += "1" * (-len(stream) % 8)
    entropy = int(stream, 2).to_bytes(len(stream) // 8, "big").replace(b"\xff", b"\xff\x00")

    def segment(marker: int, data: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(data) + 2) + data

    dc_table = bytes([0x00, 0, 0, 0, 12, *([0] * 12), *range(12)])
    ac_table = bytes([0x10, 1, *([0] * 15), 0x00])
    return b"".join(
        [
            b"\xff\xd8",
            segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"),
            segment(0xDB, b"\x00" + b"\x01" * 64),
            segment(0xC0, struct.pack(">BHHBBBB", 8, height, width, 1, 1, 0x11, 0)),
            segment(0xC4, dc_table + ac_table),
            segment(0xDA, bytes([1, 1, 0x00, 0, 63, 0])),
            entropy,
            b"\xff\xd9",
        ]
    )


def dicom_bytes(width: int, height: int, grey: int) -> bytes:
    """A minimal DICOM Part 10 file (explicit VR little endian): one 8-bit MONOCHROME2 frame."""

    def element(group: int, number: int, vr: bytes, value: bytes) -> bytes:
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            return (
                struct.pack("<HH", group, number) + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
            )
        return struct.pack("<HH", group, number) + vr + struct.pack("<H", len(value)) + value

    def text(value: str) -> bytes:
        data = value.encode("ascii")
        return data + (b"\x00" if len(data) % 2 else b"")

    sop_class = text("1.2.840.10008.5.1.4.1.1.7")  # Secondary Capture Image Storage
    sop_instance = text(f"1.2.826.0.1.3680043.10.1.{width}.{height}.{grey}")
    syntax = text("1.2.840.10008.1.2.1")  # explicit VR little endian
    meta = b"".join(
        [
            element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            element(0x0002, 0x0002, b"UI", sop_class),
            element(0x0002, 0x0003, b"UI", sop_instance),
            element(0x0002, 0x0010, b"UI", syntax),
        ]
    )
    pixels = bytes([grey]) * (width * height)
    body = b"".join(
        [
            element(0x0008, 0x0016, b"UI", sop_class),
            element(0x0008, 0x0018, b"UI", sop_instance),
            element(0x0028, 0x0002, b"US", struct.pack("<H", 1)),
            element(0x0028, 0x0004, b"CS", text("MONOCHROME2 ")),
            element(0x0028, 0x0010, b"US", struct.pack("<H", height)),
            element(0x0028, 0x0011, b"US", struct.pack("<H", width)),
            element(0x0028, 0x0100, b"US", struct.pack("<H", 8)),
            element(0x0028, 0x0101, b"US", struct.pack("<H", 8)),
            element(0x0028, 0x0102, b"US", struct.pack("<H", 7)),
            element(0x0028, 0x0103, b"US", struct.pack("<H", 0)),
            element(0x7FE0, 0x0010, b"OB", pixels + b"\x00" * (len(pixels) % 2)),
        ]
    )
    group_length = element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta)))
    return b"\x00" * 128 + b"DICM" + group_length + meta + body


def video_grey(frame: int) -> int:
    """The luma (Y, video range 16-235) of frame `frame` of an emulated video: distinct for 73 frames,
    each 3 levels from the next."""
    return 16 + (frame * 3) % 219


def video_level(frame: int) -> int:
    """The grey level a decoder shows for frame `frame` in full range (0-255), as a JPEG of it holds."""
    return round((video_grey(frame) - 16) * 255 / 219)


def mp4_bytes(width: int, height: int, frames: int, fps: int) -> bytes:
    """An MP4 (MPEG-4 Part 2, near-lossless) whose frame k is uniformly `video_grey(k)`. Needs PyAV."""
    import io

    import av
    import numpy as np

    even_w, even_h = width + width % 2, height + height % 2  # 4:2:0 needs even sizes
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"
        stream.codec_context.qmin, stream.codec_context.qmax = 1, 2
        chroma = np.full((even_h // 2, even_w), 128, dtype=np.uint8)
        for k in range(frames):
            planes = np.concatenate([np.full((even_h, even_w), video_grey(k), dtype=np.uint8), chroma])
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()

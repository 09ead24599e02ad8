"""Video frames as JPEG files, with PyAV (FFmpeg's decoder and its MJPEG encoder), for `encord-mirror media`.

PyAV is an optional dependency (`pip install 'encord-mirror[video]'`): about 100 MB unzipped, so it is
neither in the runtime's required dependencies nor in the Lambda layer (whose build refuses it). Frame N
is the Nth frame the decoder presents, counting from 0 (Encord numbers a video's frames the same way at
its frame rate; for a video with a variable frame rate the two can differ, which cannot be checked here).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import av


class VideoDecodeError(Exception):
    """The video could not be decoded (the message is FFmpeg's)."""


def have_video_decoder() -> bool:
    return importlib.util.find_spec("av") is not None


def video_frames_as_jpeg(path: Path, frames: Collection[int]) -> Iterator[tuple[int, bytes]]:
    """(frame, JPEG bytes) for each wanted frame the video has, in frame order; decoding stops after the
    last wanted one."""
    import av

    wanted = set(frames)
    if not wanted:
        return
    last = max(wanted)
    try:
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    yield index, _jpeg(frame)
                if index >= last:
                    return
    except av.FFmpegError as exc:
        raise VideoDecodeError(str(exc)) from None


def _jpeg(frame: av.VideoFrame) -> bytes:
    import av

    encoder = av.CodecContext.create("mjpeg", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width, encoder.height, encoder.pix_fmt = frame.width, frame.height, "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    encoder.qmin, encoder.qmax = 2, 2  # high quality, the same for every frame
    picture = frame.reformat(format="yuvj420p")
    packets = [*encoder.encode(picture), *encoder.encode(None)]
    return b"".join(bytes(packet) for packet in packets)

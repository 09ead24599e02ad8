"""Signed media URLs through the real SDK (`initialise_labels(include_signed_url=True)`) and the bytes the
emulator serves behind them; the image encoders checked against Pillow's decoders."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from PIL import Image

from encord_emulator.media import jpeg_bytes, png_bytes, video_level
from encord_emulator.testing import EmulatorEnv, emulator_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[EmulatorEnv]:
    with emulator_env(tmp_path) as env:
        yield env


def _image_row(env: EmulatorEnv, *, signed: bool) -> object:
    project = env.project()
    row = next(r for r in project.list_label_rows_v2() if r.data_title == "img1.jpg")
    row.initialise_labels(include_signed_url=signed)
    return row


def test_a_signed_initialise_gives_a_data_link_that_serves_the_image_at_its_size(env: EmulatorEnv) -> None:
    # When a row is initialised with signed URLs
    row = _image_row(env, signed=True)
    link = row.data_link  # type: ignore[attr-defined]
    # Then its data link is the emulator's, and answers a JPEG of the data unit's size
    assert link.startswith(env.emu.url + "/__media/")
    answer = requests.get(link, timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(answer.content)) as image:
        assert image.format == "JPEG" and image.size == (row.width, row.height)  # type: ignore[attr-defined]
    # and the same URL answers the same bytes
    assert requests.get(link, timeout=10).content == answer.content
    assert env.emu.writes() == []


def test_an_unsigned_initialise_keeps_the_fixtures_link(env: EmulatorEnv) -> None:
    row = _image_row(env, signed=False)
    assert "/__media/" not in (row.data_link or "")  # type: ignore[attr-defined]


def test_a_tampered_or_expired_url_is_refused_like_a_presigned_url(env: EmulatorEnv) -> None:
    link = _image_row(env, signed=True).data_link  # type: ignore[attr-defined]
    query = parse_qs(urlsplit(link).query)
    bigger = link.replace(f"w={query['w'][0]}", "w=4000")
    assert requests.get(bigger, timeout=10).status_code == 403
    assert requests.get(link.split("?")[0], timeout=10).status_code == 403
    env.emu.media._now = lambda: 10.0**12  # the clock past the URL's expiry
    assert requests.get(link, timeout=10).status_code == 403


def test_a_failing_data_unit_answers_its_status_until_cleared(env: EmulatorEnv) -> None:
    row = _image_row(env, signed=True)
    env.emu.media.fail(row.data_hash, 503)  # type: ignore[attr-defined]
    assert requests.get(row.data_link, timeout=10).status_code == 503  # type: ignore[attr-defined]
    env.emu.media.fail(row.data_hash, 0)  # type: ignore[attr-defined]
    assert requests.get(row.data_link, timeout=10).status_code == 200  # type: ignore[attr-defined]


@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 9), (17, 8), (640, 480), (1921, 1081)])
@pytest.mark.parametrize("grey", [0, 1, 127, 128, 200, 255])
def test_the_jpeg_encoder_decodes_to_its_size_and_grey_level(width: int, height: int, grey: int) -> None:
    with Image.open(io.BytesIO(jpeg_bytes(width, height, grey))) as image:
        image.load()
        assert image.size == (width, height) and image.mode == "L"
        assert abs(image.getpixel((width - 1, height - 1)) - grey) <= 1


def test_the_png_encoder_decodes_to_its_size_and_colour() -> None:
    with Image.open(io.BytesIO(png_bytes(33, 5, (10, 200, 30)))) as image:
        image.load()
        assert image.size == (33, 5) and image.getpixel((32, 4)) == (10, 200, 30)


def test_a_signed_video_link_serves_an_mp4_whose_frame_k_is_grey_at_video_level_k(env: EmulatorEnv) -> None:
    import av

    # Given a video row initialised with signed URLs
    project = env.project()
    row = next(r for r in project.list_label_rows_v2() if r.data_title == "vid1.mp4")
    row.initialise_labels(include_signed_url=True)
    assert row.data_link.startswith(env.emu.url + "/__media/")  # type: ignore[union-attr]
    # When its link is fetched and decoded
    answer = requests.get(row.data_link, timeout=30)  # type: ignore[arg-type]
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "video/mp4"
    with av.open(io.BytesIO(answer.content)) as container:
        frames = [f.reformat(format="yuvj420p").to_ndarray() for f in container.decode(video=0)]
    # Then it has the row's frames, at the data unit's size, each grey at its own level
    assert len(frames) >= row.number_of_frames
    for k, plane in enumerate(frames):
        assert plane.shape == (row.height * 3 // 2, row.width)  # yuv420: luma rows, then chroma
        assert abs(int(plane[1, 1]) - video_level(k)) <= 1

"""Which images of a snapshot the media step fetches, and what it counts as not fetched."""

from __future__ import annotations

from encord_mirror.cli.media import NIFTI_SLICE, VIDEO_FRAME, MediaItem, MediaSummary, snapshot_items


def _image(file_name: str, **extra: object) -> dict[str, object]:
    data_hash, _, rest = file_name.partition("/")
    frame = int(rest.split(".")[0])
    keys = {"encord_label_hash": "L", "encord_data_hash": data_hash, "encord_frame": frame}
    return {"file_name": file_name, **keys, **extra}


COCO = {
    "images": [
        _image("a/0.jpg", image_title="a.jpg"),
        _image("v/3.jpg", video_title="v.mp4"),
        _image("v/4.jpg", video_title="v.mp4"),
        _image("d/2.dcm"),
        _image("n/1.nii"),
    ]
}


def test_without_a_video_decoder_video_frames_are_counted_not_fetched() -> None:
    summary = MediaSummary("p", "main")
    items = list(snapshot_items(COCO, summary, videos=False))
    assert [i.file_name for i in items] == ["a/0.jpg", "d/2.dcm"]
    assert summary.images == 5 and summary.not_fetched == {VIDEO_FRAME: 2, NIFTI_SLICE: 1}


def test_with_a_video_decoder_video_frames_are_items_marked_video() -> None:
    summary = MediaSummary("p", "main")
    items = list(snapshot_items(COCO, summary, videos=True))
    assert MediaItem("v/4.jpg", "L", "v", 4, video=True) in items
    assert [i.video for i in items] == [False, True, True, False]
    assert summary.not_fetched == {NIFTI_SLICE: 1}

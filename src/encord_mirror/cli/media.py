"""`encord-mirror media`: fetch the images of a partition's latest COCO snapshot into the lake.

```
encord-mirror media --lake DEST --project HASH [--branch B] [--stage S]... [--ssh-key FILE]
                    [--encord-domain URL] [--workers N] [--bundle-size N] [--verify] [--json]
```
Each image of the snapshot (`coco.json`, corrected mode) is written to `media/project=<p>/<file_name>`, the
folder `coco export` and a training job read (`COCO(coco.json)` + that folder). The URLs are signed by
Encord through the SDK (`initialise_labels(include_signed_url=True)`, one bundle per `--bundle-size`
rows, fetched at once since they expire); nothing is written to Encord.

Idempotent: `media/project=<p>/_index.jsonl` records the size and sha256 of every file fetched; a file
present in the lake and in the index is skipped (`--verify` reads it again and fetches it anew if its
bytes differ). Each file is written whole or not at all (a local lake: a temporary file renamed; S3: one
PUT). A video is downloaded once and its wanted frames are decoded into JPEG files with PyAV (the `video`
extra; without it video frames are counted as not fetched); NIfTI slices are not fetched (one volume
file). Progress goes to stderr, `--json` prints a summary on stdout. Exit 0 when every image is in the
lake, 1 when a download failed (each one named), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from encord_mirror.cli.errors import CliError
from encord_mirror.cli.target import open_lake
from encord_mirror.domain.lake import latest_key, media_index_key, media_key, media_prefix, partition_prefix
from encord_mirror.domain.limits import MAX_BUNDLE_SIZE
from encord_mirror.domain.ports import ObjectStore

VIDEO_FRAME = "video frame (decoding videos needs PyAV: pip install 'encord-mirror[video]')"
NIFTI_SLICE = "NIfTI slice (the volume is one file, not one per slice)"
_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "dcm": "application/dicom"}
_SHOWN = 10  # failures listed on stderr (--json lists them all)


class MediaFetchError(Exception):
    """One file could not be downloaded; the message says why (never the signed URL's secret part)."""


@dataclass(frozen=True, slots=True)
class MediaItem:
    """One image of a snapshot, by the Encord keys its COCO entry carries."""

    file_name: str
    label_hash: str
    data_hash: str
    frame: int
    video: bool = False  # a video frame: decoded out of the video's file


@dataclass(slots=True)
class MediaSummary:
    project_hash: str
    branch: str
    partitions: list[str] = field(default_factory=list)
    images: int = 0
    fetched: int = 0
    present: int = 0
    bytes_fetched: int = 0
    not_fetched: dict[str, int] = field(default_factory=dict)  # out of scope, by why
    failed: dict[str, str] = field(default_factory=dict)  # file_name -> why
    media_uri: str = ""

    def json(self) -> dict[str, Any]:
        return {
            "project_hash": self.project_hash,
            "branch": self.branch,
            "partitions": self.partitions,
            "images": self.images,
            "fetched": self.fetched,
            "present": self.present,
            "bytes_fetched": self.bytes_fetched,
            "not_fetched": self.not_fetched,
            "failed": [{"file_name": k, "reason": v} for k, v in sorted(self.failed.items())],
            "media_uri": self.media_uri,
            "ok": not self.failed,
        }


def snapshot_items(coco: Mapping[str, Any], summary: MediaSummary, *, videos: bool) -> Iterator[MediaItem]:
    """The images of a corrected-mode snapshot to fetch (the ones not fetched are counted in `summary`);
    `videos`: whether video frames can be decoded here."""
    for image in coco["images"]:
        summary.images += 1
        file_name = str(image["file_name"])
        video = "video_title" in image
        why = VIDEO_FRAME if video and not videos else NIFTI_SLICE if file_name.endswith(".nii") else None
        if why is not None:
            summary.not_fetched[why] = summary.not_fetched.get(why, 0) + 1
            continue
        keys = (str(image["encord_label_hash"]), str(image["encord_data_hash"]), int(image["encord_frame"]))
        yield MediaItem(file_name, *keys, video=video)


def _latest_snapshots(
    lake: ObjectStore, project: str, branch: str, stages: Sequence[str] | None
) -> list[tuple[str, dict[str, Any]]]:
    """(stage, coco.json) of each asked stage's latest snapshot, or of every stage that has one."""
    if stages is None:
        prefix = partition_prefix("coco", project, branch, "x").removesuffix("stage=x/")
        found = {k[len(prefix) :].split("/", 1)[0].removeprefix("stage=") for k in lake.list_keys(prefix)}
        stages = sorted(found - {""})
        if not stages:
            raise CliError(
                f"no COCO snapshot for project {project} branch {branch!r}: run `encord-mirror sync`"
            )
    out = []
    for stage in stages:
        stored = lake.get(latest_key(project, branch, stage))
        if stored is None:
            raise CliError(f"--stage {stage}: no COCO snapshot for project {project} branch {branch!r}")
        latest = orjson.loads(stored.body)
        coco_obj = lake.get(latest["coco"])
        if coco_obj is None:
            raise CliError(f"the latest snapshot of stage {stage} names {latest['coco']}, which is missing")
        coco = orjson.loads(coco_obj.body)
        if coco["images"] and "encord_data_hash" not in coco["images"][0]:
            raise CliError(
                f"stage {stage}: its snapshot is in encord-compatible mode, whose file names are Encord's; "
                "the media step needs the default corrected mode (`sync --coco corrected`)"
            )
        out.append((stage, coco))
    return out


def read_index(lake: ObjectStore, project: str) -> dict[str, dict[str, Any]]:
    stored = lake.get(media_index_key(project))
    if stored is None:
        return {}
    entries = (orjson.loads(line) for line in stored.body.splitlines() if line.strip())
    return {str(e["file_name"]): e for e in entries}


def write_index(lake: ObjectStore, project: str, index: Mapping[str, Mapping[str, Any]]) -> None:
    body = b"".join(orjson.dumps(index[name], option=orjson.OPT_APPEND_NEWLINE) for name in sorted(index))
    lake.put(media_index_key(project), body, content_type="application/x-ndjson")


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _where(url: str) -> str:
    """A URL without its query (a signed URL's query is its credential)."""
    split = urlsplit(url)
    return f"{split.scheme}://{split.netloc}{split.path}"


class Downloader:
    """HTTP GET of signed URLs, one `requests` session per thread, retrying 429 and 5xx answers."""

    def __init__(self, *, timeout_s: float = 120.0) -> None:
        self._local = threading.local()
        self._timeout = timeout_s

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests
            from requests.adapters import HTTPAdapter
            from urllib3.util.retry import Retry

            retry = Retry(
                total=3, backoff_factor=1.0, status_forcelist=(429, 500, 502, 503, 504), raise_on_status=False
            )
            session = requests.Session()
            session.mount("https://", HTTPAdapter(max_retries=retry))
            session.mount("http://", HTTPAdapter(max_retries=retry))
            self._local.session = session
        return session

    def save(self, url: str, path: Path) -> None:
        """Stream the answer into `path` (a video may not fit in memory)."""
        import requests

        try:
            with self._session().get(url, timeout=(30, self._timeout), stream=True) as response:
                if response.status_code != 200:
                    raise MediaFetchError(f"{_where(url)}: HTTP {response.status_code}")
                with path.open("wb") as handle:
                    for block in response.iter_content(1 << 20):
                        handle.write(block)
        except requests.RequestException as exc:
            raise MediaFetchError(f"{_where(url)}: {type(exc).__name__}") from None
        if path.stat().st_size == 0:
            raise MediaFetchError(f"{_where(url)}: empty answer")

    def get(self, url: str) -> bytes:
        import requests

        try:
            response = self._session().get(url, timeout=(30, self._timeout))
        except requests.RequestException as exc:
            raise MediaFetchError(f"{_where(url)}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise MediaFetchError(f"{_where(url)}: HTTP {response.status_code}")
        body: bytes = response.content
        if not body:
            raise MediaFetchError(f"{_where(url)}: empty answer")
        return body


class _Run:
    """One media run's writes: each file into the lake and the index, or its failure into the summary."""

    def __init__(
        self,
        lake: ObjectStore,
        project: str,
        summary: MediaSummary,
        index: dict[str, dict[str, Any]],
        downloader: Downloader,
    ) -> None:
        self.lake, self.project, self.summary, self.index = lake, project, summary, index
        self.downloader = downloader
        self._lock = threading.Lock()

    def fail(self, item: MediaItem, why: str) -> None:
        with self._lock:
            self.summary.failed[item.file_name] = why

    def store(self, item: MediaItem, body: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        kind = _CONTENT_TYPES.get(item.file_name.rpartition(".")[2], "application/octet-stream")
        try:
            self.lake.put(media_key(self.project, item.file_name), body, content_type=kind)
        except (OSError, BotoCoreError, ClientError) as exc:
            self.fail(item, f"the lake refused the write ({exc})")
            return
        entry = {
            "file_name": item.file_name,
            "size": len(body),
            "sha256": _sha256(body),
            "data_hash": item.data_hash,
            "frame": item.frame,
            "label_hash": item.label_hash,
            "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with self._lock:
            self.index[item.file_name] = entry
            self.summary.fetched += 1
            self.summary.bytes_fetched += len(body)

    def image(self, item: MediaItem, url: str) -> None:
        try:
            body = self.downloader.get(url)
        except MediaFetchError as exc:
            self.fail(item, str(exc))
            return
        self.store(item, body)

    def video(self, items: Sequence[MediaItem], url: str) -> None:
        """The video downloaded once into a temporary file, its wanted frames decoded out of it."""
        from encord_mirror.adapters.video import VideoDecodeError, video_frames_as_jpeg

        by_frame = {item.frame: item for item in items}
        with tempfile.TemporaryDirectory(prefix="encord-mirror-video-") as folder:
            path = Path(folder) / "video"
            try:
                self.downloader.save(url, path)
                for frame, body in video_frames_as_jpeg(path, by_frame):
                    self.store(by_frame.pop(frame), body)
            except MediaFetchError as exc:
                why = str(exc)
            except VideoDecodeError as exc:
                why = f"cannot decode the video ({exc})"
            else:
                why = "the video has fewer frames than this frame's number"
        for item in by_frame.values():
            self.fail(item, why)


def fetch_media(
    lake: ObjectStore,
    source: Any,
    project: str,
    items: Sequence[MediaItem],
    summary: MediaSummary,
    *,
    workers: int,
    bundle_size: int,
    verify: bool,
    progress: Any,
    downloader: Downloader | None = None,
) -> None:
    """Fetch what the lake lacks (see the module docstring); `source` is an `EncordLabelSource`."""
    from encord_mirror.adapters.encord_source import EncordApiError

    index = read_index(lake, project)
    present = set(lake.list_keys(media_prefix(project)))
    todo: list[MediaItem] = []
    for item in items:
        entry = index.get(item.file_name)
        in_lake = entry is not None and media_key(project, item.file_name) in present
        if in_lake and entry is not None and (not verify or _matches(lake, project, item.file_name, entry)):
            summary.present += 1
            continue
        todo.append(item)
    progress(
        f"media: {len(items)} images to have, {summary.present} already in the lake, {len(todo)} to fetch"
    )
    by_row: dict[str, list[MediaItem]] = {}
    for item in todo:
        by_row.setdefault(item.label_hash, []).append(item)
    rows = list(by_row)
    run = _Run(lake, project, summary, index, downloader or Downloader())
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(rows), bundle_size):
                chunk = rows[start : start + bundle_size]
                wanted = {h: {(i.data_hash, i.frame) for i in by_row[h]} for h in chunk}
                try:
                    signed = source.signed_links(project, wanted, bundle_size=bundle_size)
                    links, failed_rows = signed.links, signed.failed
                except EncordApiError as exc:
                    links, failed_rows = {}, dict.fromkeys(chunk, str(exc))
                videos: dict[str, list[MediaItem]] = {}
                jobs = []
                for label_hash in chunk:
                    for item in by_row[label_hash]:
                        url = links.get((item.data_hash, item.frame))
                        if url is None:
                            why = failed_rows.get(label_hash) or "Encord gave no signed URL for this frame"
                            run.fail(item, f"label row {label_hash}: {why}")
                        elif item.video:
                            videos.setdefault(url, []).append(item)
                        else:
                            jobs.append(pool.submit(run.image, item, url))
                jobs.extend(pool.submit(run.video, frames, url) for url, frames in videos.items())
                for job in jobs:
                    job.result()
                done = summary.fetched + len(summary.failed)
                progress(
                    f"media: {done}/{len(todo)} ({summary.fetched} fetched, {len(summary.failed)} failed)"
                )
    finally:
        write_index(lake, project, index)  # what was fetched is recorded, even when interrupted


def _matches(lake: ObjectStore, project: str, file_name: str, entry: Mapping[str, Any]) -> bool:
    stored = lake.get(media_key(project, file_name))
    return (
        stored is not None and len(stored.body) == entry["size"] and _sha256(stored.body) == entry["sha256"]
    )


def media_main(args: argparse.Namespace) -> int:
    from encord_mirror.adapters.encord_source import EncordAuthError, EncordProjectAccessError
    from encord_mirror.cli.sync import Progress, open_source

    if args.workers < 1:
        raise CliError(f"--workers must be at least 1 (got {args.workers})")
    if not 1 <= args.bundle_size <= MAX_BUNDLE_SIZE:
        raise CliError(f"--bundle-size must be between 1 and {MAX_BUNDLE_SIZE} (got {args.bundle_size})")
    progress = Progress()
    lake = open_lake(args.lake)
    snapshots = _latest_snapshots(lake, args.project, args.branch, args.stage)
    summary = MediaSummary(
        args.project, args.branch, media_uri=lake.uri(media_prefix(args.project).rstrip("/"))
    )
    from encord_mirror.adapters.video import have_video_decoder

    items: dict[str, MediaItem] = {}
    videos = have_video_decoder()
    for stage, coco in snapshots:
        summary.partitions.append(stage)
        for item in snapshot_items(coco, summary, videos=videos):
            items.setdefault(item.file_name, item)
    source = open_source(args.ssh_key, args.encord_domain)
    try:
        fetch_media(
            lake,
            source,
            args.project,
            list(items.values()),
            summary,
            workers=args.workers,
            bundle_size=args.bundle_size,
            verify=args.verify,
            progress=progress,
        )
    except (EncordAuthError, EncordProjectAccessError) as exc:
        raise CliError(str(exc)) from None
    _report(summary)
    if args.json:
        sys.stdout.write(orjson.dumps(summary.json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 1 if summary.failed else 0


def _report(summary: MediaSummary) -> None:
    skipped = "".join(f"; {n} not fetched: {why}" for why, n in sorted(summary.not_fetched.items()))
    where = f"{summary.images} images in {len(summary.partitions)} partition(s)"
    fetched = f"{summary.fetched} fetched ({summary.bytes_fetched} bytes)"
    print(
        f"media: {where}: {fetched}, {summary.present} already in the lake, {len(summary.failed)} failed"
        f"{skipped}",
        file=sys.stderr,
    )
    for file_name, why in sorted(summary.failed.items())[:_SHOWN]:
        print(f"  failed: {file_name}: {why}", file=sys.stderr)
    if len(summary.failed) > _SHOWN:
        print(f"  ... and {len(summary.failed) - _SHOWN} more (--json lists them all)", file=sys.stderr)
    print(f"media folder: {summary.media_uri}", file=sys.stderr)
    if summary.failed:
        print(
            "Run `encord-mirror media` again to fetch what failed (what is in the lake is kept).",
            file=sys.stderr,
        )

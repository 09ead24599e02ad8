"""Pytest-free helpers to build small emulator fixtures with the SDK's own objects, and to connect the SDK.

`build_fixture(directory)` writes one project with 3 workflow stages, two images and a video labelled on main,
one consensus branch row, and one unlabelled image; `extra_images=N` adds N more labelled images (cloned, so
thousands of rows take well under a second).
"""

from __future__ import annotations

import copy
import types
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from encord_emulator.keys import generate_keypair
from encord_emulator.server import Emulator
from encord_emulator.store import format_long

STAGES: tuple[dict[str, str], ...] = (
    {"uuid": "5a5a0000-0000-4000-8000-000000000001", "title": "Annotate 1", "stageType": "ANNOTATION"},
    {"uuid": "5a5a0000-0000-4000-8000-000000000002", "title": "Review 1", "stageType": "REVIEW"},
    {"uuid": "5a5a0000-0000-4000-8000-000000000003", "title": "Complete", "stageType": "DONE"},
)
CONSENSUS_BRANCH = "consensus-annotator-1"
DATASET_HASH = "d5d50000-0000-4000-8000-000000000001"
DATASET_TITLE = "Emulated dataset"
BASE_TIME = datetime(2025, 9, 1, 10, 0, 0, tzinfo=UTC)


@dataclass
class FixtureRow:
    """One line of rows.jsonl, kept for assertions."""

    row: dict[str, Any]
    stage: str
    task_status: str

    @property
    def label_hash(self) -> str:
        return str(self.row["label_hash"])

    @property
    def data_hash(self) -> str:
        return str(self.row["data_hash"])

    @property
    def branch(self) -> str:
        return str(self.row["branch_name"])

    @property
    def edited(self) -> datetime:
        return datetime.strptime(self.row["last_edited_at"], "%a, %d %b %Y %H:%M:%S UTC").replace(tzinfo=UTC)


@dataclass
class Fixture:
    """What `build_fixture` wrote: the directory, the project hash, its rows and its unlabelled data units."""

    data_dir: Path
    project_hash: str
    ontology: dict[str, Any]
    stages: list[dict[str, str]]
    rows: list[FixtureRow]
    unlabelled: list[dict[str, Any]] = field(default_factory=list)

    def main_rows(self) -> list[FixtureRow]:
        return [row for row in self.rows if row.branch == "main"]

    def by_title(self, data_title: str, branch: str = "main") -> FixtureRow:
        for row in self.rows:
            if row.row["data_title"] == data_title and row.branch == branch:
                return row
        raise KeyError(f"no fixture row titled {data_title!r} on {branch!r}")


def build_ontology() -> Any:
    """The protocol notes' ontology: a Car box with a Colour radio attribute, and a Weather classification."""
    from encord.objects.attributes import RadioAttribute
    from encord.objects.common import Shape
    from encord.objects.ontology_structure import OntologyStructure

    structure = OntologyStructure()
    car = structure.add_object(
        name="Car", shape=Shape.BOUNDING_BOX, feature_node_hash="aaaa0001", color="#D33115"
    )
    colour = car.add_attribute(RadioAttribute, name="Colour", feature_node_hash="aaaa0002")
    colour.add_option(label="Red", value="red", feature_node_hash="aaaa0003")
    colour.add_option(label="Blue", value="blue", feature_node_hash="aaaa0004")
    weather = structure.add_classification(feature_node_hash="bbbb0001")
    radio = weather.add_attribute(RadioAttribute, name="Weather", feature_node_hash="bbbb0002")
    radio.add_option(label="Sunny", value="sunny", feature_node_hash="bbbb0003")
    radio.add_option(label="Rainy", value="rainy", feature_node_hash="bbbb0004")
    return structure


def make_row(
    structure: Any,
    *,
    data_type: str,
    data_title: str,
    branch: str = "main",
    edited: datetime = BASE_TIME,
    label_hash: str | None = None,
    data_hash: str | None = None,
    frames: Iterable[int] = (0,),
    colour: str = "red",
    task_status: str = "QUEUED",
) -> dict[str, Any]:
    """A `to_encord_dict()` row built through the SDK (one Car box per frame, one Weather answer)."""
    from encord.objects.coordinates import BoundingBoxCoordinates
    from encord.objects.ontology_labels_impl import LabelRowV2
    from encord.orm.storage import CustomerProvidedImageMetadata, CustomerProvidedVideoMetadata

    media: Any
    if data_type == "image":
        media = CustomerProvidedImageMetadata(mime_type="image/jpeg", file_size=1000, height=480, width=640)
    elif data_type == "video":
        media = CustomerProvidedVideoMetadata(
            mime_type="video/mp4", file_size=10_000, height=720, width=1280, fps=25.0, duration=0.2
        )
    else:
        raise ValueError(f"data_type must be 'image' or 'video', got {data_type!r}")
    ontology = types.SimpleNamespace(structure=structure)
    label_row = LabelRowV2.from_media_metadata(ontology, media, branch_name=branch)  # type: ignore[arg-type]
    data_hash = data_hash or str(uuid.uuid4())
    stamp = format_long(edited)
    template = label_row.to_encord_dict()
    unit = next(iter(template["data_units"].values()))
    unit.update(
        {"data_hash": data_hash, "data_title": data_title, "data_link": f"s3://emulated/{data_title}"}
    )
    template.update(
        {
            "label_hash": label_hash or str(uuid.uuid4()),
            "data_hash": data_hash,
            "dataset_hash": DATASET_HASH,
            "dataset_title": DATASET_TITLE,
            "data_title": data_title,
            "created_at": format_long(edited - timedelta(hours=1)),
            "last_edited_at": stamp,
            "annotation_task_status": task_status,
            "data_units": {data_hash: unit},
        }
    )
    label_row.from_labels_dict(template)

    car = structure.get_child_by_hash("aaaa0001")
    colour_attribute = structure.get_child_by_hash("aaaa0002")
    option = structure.get_child_by_hash("aaaa0003" if colour == "red" else "aaaa0004")
    instance = car.create_instance()
    for index, frame in enumerate(frames):
        box = BoundingBoxCoordinates(height=0.2, width=0.3, top_left_x=0.1 + index * 0.01, top_left_y=0.2)
        instance.set_for_frames(box, frames=frame, created_at=edited, last_edited_at=edited)
    instance.set_answer(option, attribute=colour_attribute)
    label_row.add_object_instance(instance)

    weather = structure.get_child_by_hash("bbbb0001")
    sunny = structure.get_child_by_hash("bbbb0003")
    classification = weather.create_instance()
    classification.set_answer(sunny)
    classification.set_for_frames(frames=0, created_at=edited, last_edited_at=edited)
    label_row.add_classification_instance(classification)
    row: dict[str, Any] = label_row.to_encord_dict()
    return row


def clone_row(
    row: dict[str, Any], *, data_title: str, edited: datetime, branch: str = "main"
) -> dict[str, Any]:
    """A copy of `row` for a new data unit (new label and data hash), cheap enough for thousands of rows."""
    clone = copy.deepcopy(row)
    data_hash = str(uuid.uuid4())
    unit = next(iter(clone["data_units"].values()))
    unit.update(
        {"data_hash": data_hash, "data_title": data_title, "data_link": f"s3://emulated/{data_title}"}
    )
    clone.update(
        {
            "label_hash": str(uuid.uuid4()),
            "branch_name": branch,
            "data_hash": data_hash,
            "data_title": data_title,
            "last_edited_at": format_long(edited),
            "data_units": {data_hash: unit},
        }
    )
    return clone


def write_fixture(
    data_dir: Path,
    project_hash: str,
    *,
    title: str,
    ontology: dict[str, Any],
    stages: Iterable[dict[str, str]],
    rows: Iterable[FixtureRow],
    unlabelled: Iterable[dict[str, Any]] = (),
) -> Path:
    """Write `data_dir/<project_hash>/` in the emulator's fixture format; returns the project directory."""
    project_dir = data_dir / project_hash
    project_dir.mkdir(parents=True, exist_ok=True)
    spec = {"title": title, "ontology": ontology, "workflow": {"stages": list(stages)}}
    (project_dir / "project.json").write_bytes(orjson.dumps(spec))
    with (project_dir / "rows.jsonl").open("wb") as handle:
        for row in rows:
            handle.write(
                orjson.dumps({"row": row.row, "stage": row.stage, "task_status": row.task_status}) + b"\n"
            )
    unlabelled_items = list(unlabelled)
    if unlabelled_items:
        with (project_dir / "unlabelled.jsonl").open("wb") as handle:
            for item in unlabelled_items:
                handle.write(orjson.dumps(item) + b"\n")
    return project_dir


def build_fixture(data_dir: Path, *, project_hash: str | None = None, extra_images: int = 0) -> Fixture:
    """One project: img1.jpg (Annotate 1, QUEUED), img2.jpg (Review 1, IN_REVIEW), vid1.mp4 (Complete,
    COMPLETED) on main, edited on 1, 2 and 3 Sep 2025 at 10:00 UTC; img1.jpg also on `CONSENSUS_BRANCH`
    (4 Sep); and img3.jpg unlabelled (Annotate 1, QUEUED). `extra_images` adds bulk-NNNNN.jpg rows
    (Annotate 1, ASSIGNED) edited on 10 Sep 2025 plus one second each.
    """
    structure = build_ontology()
    project_hash = project_hash or str(uuid.uuid4())
    day = timedelta(days=1)
    img1 = make_row(
        structure, data_type="image", data_title="img1.jpg", edited=BASE_TIME, task_status="QUEUED"
    )
    img2 = make_row(
        structure, data_type="image", data_title="img2.jpg", edited=BASE_TIME + day, colour="blue",
        task_status="IN_REVIEW",
    )  # fmt: skip
    vid1 = make_row(
        structure, data_type="video", data_title="vid1.mp4", edited=BASE_TIME + 2 * day, frames=(0, 1, 3),
        task_status="COMPLETED",
    )  # fmt: skip
    consensus = make_row(
        structure, data_type="image", data_title="img1.jpg", branch=CONSENSUS_BRANCH,
        edited=BASE_TIME + 3 * day, data_hash=img1["data_hash"], colour="blue", task_status="QUEUED",
    )  # fmt: skip
    rows = [
        FixtureRow(img1, "Annotate 1", "QUEUED"),
        FixtureRow(consensus, "Annotate 1", "QUEUED"),
        FixtureRow(img2, "Review 1", "IN_REVIEW"),
        FixtureRow(vid1, "Complete", "COMPLETED"),
    ]
    bulk_start = BASE_TIME + 9 * day
    for index in range(extra_images):
        clone = clone_row(
            img1, data_title=f"bulk-{index:05d}.jpg", edited=bulk_start + timedelta(seconds=index)
        )
        clone["annotation_task_status"] = "ASSIGNED"
        rows.append(FixtureRow(clone, "Annotate 1", "ASSIGNED"))
    unlabelled = [
        {
            "data_hash": str(uuid.uuid4()),
            "data_title": "img3.jpg",
            "data_type": "IMAGE",
            "dataset_hash": DATASET_HASH,
            "dataset_title": DATASET_TITLE,
            "stage": "Annotate 1",
            "task_status": "QUEUED",
            "width": 640,
            "height": 480,
        }
    ]
    ontology_dict: dict[str, Any] = structure.to_dict()
    write_fixture(
        data_dir,
        project_hash,
        title="Emulated project",
        ontology=ontology_dict,
        stages=STAGES,
        rows=rows,
        unlabelled=unlabelled,
    )
    return Fixture(data_dir, project_hash, ontology_dict, [dict(s) for s in STAGES], rows, unlabelled)


def user_client(url: str, private_key_path: Path) -> Any:
    """An `EncordUserClient` for the emulator at `url`, signing with the OpenSSH private key file."""
    from encord.user_client import EncordUserClient

    return EncordUserClient.create_with_ssh_private_key(
        private_key_path.read_text(encoding="ascii"), domain=url
    )


@dataclass
class EmulatorEnv:
    """A started emulator over a `build_fixture` project, with an authorized key to reach it."""

    emu: Emulator
    fixture: Fixture
    key_path: Path
    public_key: str

    @property
    def project_hash(self) -> str:
        return self.fixture.project_hash

    def client(self) -> Any:
        """A new `EncordUserClient` signing with the authorized key."""
        return user_client(self.emu.url, self.key_path)

    def project(self) -> Any:
        """The SDK's `Project` for the fixture project (2 requests: project, ontology)."""
        return self.client().get_project(self.fixture.project_hash)


@contextmanager
def emulator_env(directory: Path, *, extra_images: int = 0, **emulator_kwargs: Any) -> Iterator[EmulatorEnv]:
    """Build a fixture under `directory/fixture`, a key under `directory/keys`, and run an Emulator on it."""
    fixture = build_fixture(directory / "fixture", extra_images=extra_images)
    key_path, public_key = generate_keypair(directory / "keys")
    with Emulator(directory / "fixture", authorized_keys=[public_key], **emulator_kwargs) as emu:
        yield EmulatorEnv(emu, fixture, key_path, public_key)


def without_objects(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of a label row dict with every object removed: a valid edit that changes its content."""
    edited = copy.deepcopy(row)
    edited["object_answers"] = {}
    for unit in edited["data_units"].values():
        labels = unit.get("labels") or {}
        if "objects" in labels:
            labels["objects"] = []
        else:
            unit["labels"] = {}
    return edited


def corrupt_row(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of a label row dict that the SDK cannot parse: objects of an unknown feature, without shape."""
    broken = copy.deepcopy(row)
    for unit in broken["data_units"].values():
        labels = unit.get("labels") or {}
        frames = [labels] if "objects" in labels else list(labels.values())
        for frame in frames:
            for obj in frame.get("objects", []):
                obj["featureHash"] = "ffffffff"
                obj.pop("shape", None)
    return broken

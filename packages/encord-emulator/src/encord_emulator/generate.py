"""Synthetic Encord projects for the emulator, the tests, the demo and the benchmarks.

`generate(out, rows, seed=..., projects=...)` writes the fixture format the emulator serves::

    DIR/<project_hash>/project.json      {"title", "ontology": OntologyStructure.to_dict(),
                                          "workflow": {"stages": [{"uuid", "title", "stageType"}]}}
    DIR/<project_hash>/rows.jsonl        {"row": LabelRowV2.to_encord_dict(), "stage": <title>,
                                          "task_status": ...}
    DIR/<project_hash>/unlabelled.jsonl  data units without a label row on main

Every row is valid by construction: a small set of template rows is built once per run with the SDK's own
label objects (`LabelRowV2.from_labels_dict`, `ObjectInstance`, `ClassificationInstance`, `set_answer`, the
coordinate classes) and checked to survive `from_labels_dict(row).to_encord_dict() == row`. Each template is
then serialised with placeholder tokens in place of every hash, title, timestamp, status and coordinate, and
rows are stamped out of it by string substitution: 100,000 rows take seconds instead of an hour of SDK calls.
Coordinates move by a per-object shift that keeps them inside the unit square, so the shapes stay valid.

Data types covered: IMAGE, IMG_GROUP (image groups of mixed sizes, and image sequences: same-sized images
with tracked objects; the 0.1.211 SDK parses an image sequence's labels per image unit, so that is how they
are written), VIDEO, DICOM, NIFTI, PDF, AUDIO and PLAIN_TEXT. Skipped, because the SDK cannot build them
offline without per-row `spaces` metadata (the listing's `spaces: {}` cannot carry it) or has no writer for
them: TIME_SERIES (its root layer is a space), GROUP, SCENE, DICOM_STUDY, and `text/html` (HTML ranges).

Two SDK behaviours shape the templates. `to_encord_dict()` reverses the order of an object's dynamic answers
on every round trip, so an object carries at most one dynamic answer (otherwise no row is a fixed point).
And `number_of_frames` is not in the row: `label_row_metadata()` derives it, the way a listing must send it.
"""

from __future__ import annotations

import argparse
import base64
import math
import random
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Final, TextIO

import orjson

__all__ = [
    "DATA_KINDS",
    "STAGES",
    "GenerateError",
    "generate",
    "generate_main",
    "iter_records",
    "label_row_metadata",
]


class GenerateError(Exception):
    """The generator was asked for something it cannot write (the message names the argument to change)."""


@dataclass(frozen=True)
class StageSpec:
    title: str
    stage_type: str
    weight: float
    task_statuses: tuple[str, ...]
    label_status: str


# A stage title with a space and a slash on purpose: the mirror must encode stage titles for S3 keys and Hive
# partitions, and a fixture that only has "Annotate" would never prove it does.
STAGES: Final[tuple[StageSpec, ...]] = (
    StageSpec("Annotate", "ANNOTATION", 0.35, ("QUEUED", "ASSIGNED", "RETURNED"), "LABEL_IN_PROGRESS"),
    StageSpec("Review", "REVIEW", 0.25, ("IN_REVIEW",), "LABELLED"),
    StageSpec("Expert review / QA", "REVIEW", 0.10, ("IN_REVIEW", "RETURNED"), "REVIEW_IN_PROGRESS"),
    StageSpec("Complete", "DONE", 0.30, ("COMPLETED",), "REVIEWED"),
)

# (kind, upper-case data type, weight): the share of data units of each kind.
DATA_KINDS: Final[tuple[tuple[str, str, float], ...]] = (
    ("image", "IMAGE", 0.42),
    ("image_group", "IMG_GROUP", 0.07),
    ("image_sequence", "IMG_GROUP", 0.06),
    ("video", "VIDEO", 0.15),
    ("dicom", "DICOM", 0.06),
    ("nifti", "NIFTI", 0.04),
    ("pdf", "PDF", 0.05),
    ("audio", "AUDIO", 0.07),
    ("plain_text", "PLAIN_TEXT", 0.08),
)

CONSENSUS_SHARE: Final = 0.15
UNLABELLED_EVERY: Final = 20
SHARED_TIMESTAMP_SHARE: Final = 0.12
EDIT_WINDOW_DAYS: Final = 90
MAX_SHIFT: Final = 0.08
ANNOTATORS: Final = ("ana@example.com", "ben@example.com", "chen@example.com", "dara@example.com")
MEDIA_ROOT: Final = "https://media.example.com/synthetic"

# Placeholders. `z` and `q` lie outside the alphabet of the SDK's bitmask RLE strings ('0'..'o'), so a token
# can never occur inside one by accident; numeric tokens are JSON strings, replaced along with their quotes.
_STR_TOKEN = "zq{:06d}"
_NUM_TOKEN = "zn{:06d}"
_TOKEN_RE: Final = re.compile(r'"zn(\d{6})"|zq(\d{6})')

_TEMPLATE_EPOCH: Final = datetime(2001, 1, 1, tzinfo=UTC)


def _long_time(moment: datetime) -> str:
    """The SDK's own timestamp text (`Tue, 02 Sep 2025 10:00:00 UTC`), locale-independent."""
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    m = moment.astimezone(UTC)
    return (
        f"{days[m.weekday()]}, {m.day:02d} {months[m.month - 1]} {m.year:04d} "
        f"{m.hour:02d}:{m.minute:02d}:{m.second:02d} UTC"
    )


# Tokens and templates


@dataclass(frozen=True)
class _Slot:
    key: str | None  # a string value looked up per row, or None for a shifted coordinate
    obj: int = 0
    axis: int = 0
    base: float = 0.0


@dataclass
class _Template:
    kind: str
    layout: _Kind  # templates with the same layout fit the same data unit (consensus rows pick among them)
    data_type: str  # lower case, as in the row
    parts: list[str]
    slots: list[_Slot]
    n_objects: int
    n_classifications: int
    unit_count: int
    shift_bounds: list[tuple[float, float, float, float]]


class _Tokens:
    """Hands out placeholder strings and remembers which value key each one stands for."""

    def __init__(self) -> None:
        self.key_of: dict[str, str] = {}
        self._by_key: dict[str, str] = {}
        self._numbers = 0

    def __call__(self, key: str) -> str:
        token = self._by_key.get(key)
        if token is None:
            token = _STR_TOKEN.format(len(self._by_key))
            self._by_key[key] = token
            self.key_of[token[2:]] = key
        return token

    def number(self) -> str:
        self._numbers += 1
        return _NUM_TOKEN.format(self._numbers)


# The ontology


@dataclass
class _Ontology:
    structure: Any
    objects: dict[str, Any] = field(default_factory=dict)
    classifications: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    skeleton: Any = None


def _build_ontology(fh: Callable[[str], str]) -> _Ontology:
    """One ontology with every shape and attribute kind; `fh(name)` gives each node its featureNodeHash."""
    from encord.objects import OntologyStructure
    from encord.objects.attributes import ChecklistAttribute, NumericAttribute, RadioAttribute, TextAttribute
    from encord.objects.common import Shape
    from encord.objects.skeleton_template import SkeletonTemplate, SkeletonTemplateCoordinate

    s = OntologyStructure()
    ont = _Ontology(structure=s)
    o, a, opt = ont.objects, ont.attrs, ont.options

    o["vehicle"] = s.add_object("Vehicle", Shape.BOUNDING_BOX, feature_node_hash=fh("vehicle"))
    a["vehicle.type"] = o["vehicle"].add_attribute(
        RadioAttribute, "Type", feature_node_hash=fh("vehicle.type")
    )
    opt["car"] = a["vehicle.type"].add_option("Car", feature_node_hash=fh("car"))
    opt["truck"] = a["vehicle.type"].add_option("Truck", feature_node_hash=fh("truck"))
    a["car.features"] = opt["car"].add_nested_attribute(
        ChecklistAttribute, "Features", feature_node_hash=fh("car.features")
    )
    opt["roof_rack"] = a["car.features"].add_option("Roof rack", feature_node_hash=fh("roof_rack"))
    opt["tow_bar"] = a["car.features"].add_option("Tow bar", feature_node_hash=fh("tow_bar"))
    a["truck.axles"] = opt["truck"].add_nested_attribute(
        RadioAttribute, "Axles", feature_node_hash=fh("axles")
    )
    a["truck.company"] = opt["truck"].add_nested_attribute(
        TextAttribute, "Company", feature_node_hash=fh("company")
    )
    opt["two"] = a["truck.axles"].add_option("Two", feature_node_hash=fh("two"))
    opt["three_plus"] = a["truck.axles"].add_option("Three or more", feature_node_hash=fh("three_plus"))
    a["vehicle.damage"] = o["vehicle"].add_attribute(
        ChecklistAttribute, "Damage", feature_node_hash=fh("damage")
    )
    opt["scratch"] = a["vehicle.damage"].add_option("Scratch", feature_node_hash=fh("scratch"))
    opt["dent"] = a["vehicle.damage"].add_option("Dent", feature_node_hash=fh("dent"))
    a["vehicle.plate"] = o["vehicle"].add_attribute(TextAttribute, "Plate", feature_node_hash=fh("plate"))
    a["vehicle.speed"] = o["vehicle"].add_attribute(NumericAttribute, "Speed", feature_node_hash=fh("speed"))
    a["vehicle.occluded"] = o["vehicle"].add_attribute(
        RadioAttribute, "Occluded", feature_node_hash=fh("occluded"), dynamic=True
    )
    opt["occluded_yes"] = a["vehicle.occluded"].add_option("Yes", feature_node_hash=fh("occluded_yes"))
    opt["occluded_no"] = a["vehicle.occluded"].add_option("No", feature_node_hash=fh("occluded_no"))

    o["pedestrian"] = s.add_object(
        "Pedestrian", Shape.ROTATABLE_BOUNDING_BOX, feature_node_hash=fh("pedestrian")
    )
    a["pedestrian.pose"] = o["pedestrian"].add_attribute(RadioAttribute, "Pose", feature_node_hash=fh("pose"))
    opt["standing"] = a["pedestrian.pose"].add_option("Standing", feature_node_hash=fh("standing"))
    opt["walking"] = a["pedestrian.pose"].add_option("Walking", feature_node_hash=fh("walking"))
    a["pedestrian.activity"] = o["pedestrian"].add_attribute(
        TextAttribute, "Activity", feature_node_hash=fh("activity"), dynamic=True
    )

    o["building"] = s.add_object("Building", Shape.POLYGON, feature_node_hash=fh("building"))
    a["building.material"] = o["building"].add_attribute(
        RadioAttribute, "Material", feature_node_hash=fh("material")
    )
    opt["brick"] = a["building.material"].add_option("Brick", feature_node_hash=fh("brick"))
    opt["glass"] = a["building.material"].add_option("Glass", feature_node_hash=fh("glass"))

    o["lane"] = s.add_object("Lane marking", Shape.POLYLINE, feature_node_hash=fh("lane"))
    a["lane.colour"] = o["lane"].add_attribute(ChecklistAttribute, "Colour", feature_node_hash=fh("colour"))
    opt["white"] = a["lane.colour"].add_option("White", feature_node_hash=fh("white"))
    opt["yellow"] = a["lane.colour"].add_option("Yellow", feature_node_hash=fh("yellow"))

    o["landmark"] = s.add_object("Landmark", Shape.POINT, feature_node_hash=fh("landmark"))
    a["landmark.name"] = o["landmark"].add_attribute(TextAttribute, "Name", feature_node_hash=fh("lm_name"))

    joints = ("head", "neck", "left hand", "right hand", "hip")
    template = SkeletonTemplate(
        name="Person pose",
        width=1.0,
        height=1.0,
        skeleton={
            str(i): SkeletonTemplateCoordinate(
                x=0.5, y=0.1 + 0.2 * i, name=j, color="#00AA00", value=j.replace(" ", "_"), feature_hash=fh(j)
            )
            for i, j in enumerate(joints)
        },
        skeleton_edges={"0": {"1": {"color": "#00AA00"}}, "1": {"2": {"color": "#00AA00"}, "3": {}, "4": {}}},
    )
    o["pose"], ont.skeleton = s.add_skeleton_object("Person pose", template, feature_node_hash=fh("pose_obj"))

    o["segment"] = s.add_object("Segment", Shape.BITMASK, feature_node_hash=fh("segment"))
    a["segment.class"] = o["segment"].add_attribute(
        RadioAttribute, "Class", feature_node_hash=fh("seg_class")
    )
    opt["sky"] = a["segment.class"].add_option("Sky", feature_node_hash=fh("sky"))
    opt["road"] = a["segment.class"].add_option("Road", feature_node_hash=fh("road"))

    o["sound"] = s.add_object("Sound event", Shape.AUDIO, feature_node_hash=fh("sound"))
    a["sound.speaker"] = o["sound"].add_attribute(RadioAttribute, "Speaker", feature_node_hash=fh("speaker"))
    opt["adult"] = a["sound.speaker"].add_option("Adult", feature_node_hash=fh("adult"))
    opt["child"] = a["sound.speaker"].add_option("Child", feature_node_hash=fh("child"))

    o["entity"] = s.add_object("Entity", Shape.TEXT, feature_node_hash=fh("entity"))
    a["entity.type"] = o["entity"].add_attribute(
        RadioAttribute, "Entity type", feature_node_hash=fh("ent_type")
    )
    opt["person"] = a["entity.type"].add_option("Person", feature_node_hash=fh("person"))
    opt["organisation"] = a["entity.type"].add_option("Organisation", feature_node_hash=fh("organisation"))

    c = ont.classifications
    c["weather"] = s.add_classification(feature_node_hash=fh("weather"))
    a["weather"] = c["weather"].add_attribute(RadioAttribute, "Weather", feature_node_hash=fh("weather.attr"))
    opt["sunny"] = a["weather"].add_option("Sunny", feature_node_hash=fh("sunny"))
    opt["rain"] = a["weather"].add_option("Rain", feature_node_hash=fh("rain"))
    a["rain.intensity"] = opt["rain"].add_nested_attribute(
        RadioAttribute, "Intensity", feature_node_hash=fh("intensity")
    )
    opt["light"] = a["rain.intensity"].add_option("Light", feature_node_hash=fh("light"))
    opt["heavy"] = a["rain.intensity"].add_option("Heavy", feature_node_hash=fh("heavy"))
    c["tags"] = s.add_classification(feature_node_hash=fh("tags"))
    a["tags"] = c["tags"].add_attribute(ChecklistAttribute, "Scene tags", feature_node_hash=fh("tags.attr"))
    opt["urban"] = a["tags"].add_option("Urban", feature_node_hash=fh("urban"))
    opt["night"] = a["tags"].add_option("Night", feature_node_hash=fh("night"))
    opt["blurry"] = a["tags"].add_option("Blurry", feature_node_hash=fh("blurry"))
    c["caption"] = s.add_classification(feature_node_hash=fh("caption"))
    a["caption"] = c["caption"].add_attribute(TextAttribute, "Caption", feature_node_hash=fh("caption.attr"))
    c["quality"] = s.add_classification(feature_node_hash=fh("quality"))
    a["quality"] = c["quality"].add_attribute(
        NumericAttribute, "Quality score", feature_node_hash=fh("q.attr")
    )
    return ont


# The names `_build_ontology` passes to `fh`, in order, so a project can map each to its own hash.
def _feature_names() -> list[str]:
    names: list[str] = []

    def record(name: str) -> str:
        names.append(name)
        return name

    _build_ontology(record)
    return names


# Template rows, built with the SDK


@dataclass(frozen=True)
class _Unit:
    mime: str
    width: int
    height: int


@dataclass(frozen=True)
class _Kind:
    kind: str
    data_type: str  # lower case
    units: tuple[_Unit, ...]
    frames: int
    fps: float | None = None
    duration: float | None = None


def _kinds() -> list[tuple[_Kind, int]]:
    """Every (media layout, variant) a template is built for; a variant picks a shape mix."""
    image_sizes = ((640, 480), (1280, 720), (1920, 1080))
    out: list[tuple[_Kind, int]] = []
    for i, (w, h) in enumerate(image_sizes):
        mime = "image/png" if i == 1 else "image/jpeg"
        for variant in range(4):
            out.append((_Kind("image", "image", (_Unit(mime, w, h),), 1), variant))
    group = (_Unit("image/jpeg", 800, 600), _Unit("image/png", 1024, 768), _Unit("image/jpeg", 640, 480))
    out.append((_Kind("image_group", "img_group", group, 3), 0))
    out.append((_Kind("image_group", "img_group", (*group, _Unit("image/jpeg", 1600, 1200)), 4), 1))
    out.append((_Kind("image_sequence", "img_group", (_Unit("image/jpeg", 1280, 720),) * 8, 8), 0))
    out.append((_Kind("image_sequence", "img_group", (_Unit("image/jpeg", 640, 480),) * 12, 12), 1))
    out.append((_Kind("video", "video", (_Unit("video/mp4", 1280, 720),), 30, 10.0, 3.0), 0))
    out.append((_Kind("video", "video", (_Unit("video/mp4", 1920, 1080),), 60, 30.0, 2.0), 1))
    out.append((_Kind("dicom", "dicom", (_Unit("application/dicom", 512, 512),), 24), 0))
    out.append((_Kind("dicom", "dicom", (_Unit("application/dicom", 256, 256),), 12), 1))
    out.append((_Kind("nifti", "nifti", (_Unit("application/x-nifti", 256, 256),), 16), 0))
    out.append((_Kind("nifti", "nifti", (_Unit("application/x-nifti", 128, 128),), 8), 1))
    out.append((_Kind("pdf", "pdf", (_Unit("application/pdf", 0, 0),), 5), 0))
    out.append((_Kind("audio", "audio", (_Unit("audio/mpeg", 0, 0),), 1, None, 12.5), 0))
    out.append((_Kind("audio", "audio", (_Unit("audio/wav", 0, 0),), 1, None, 4.0), 1))
    out.append((_Kind("plain_text", "plain_text", (_Unit("text/plain", 0, 0),), 1), 0))
    out.append((_Kind("plain_text", "plain_text", (_Unit("text/plain", 0, 0),), 1), 1))
    return out


class _Labeller:
    """The labels being added to one template row: objects and classifications numbered in the order they
    are made (their hashes are tokens), and objects added to the row in the order a parsed row lists them."""

    def __init__(self, builder: _TemplateBuilder, row: Any) -> None:
        self.b = builder
        self.row = row
        self.n_obj = 0
        self.n_cls = 0
        self.placed: list[tuple[int, Any]] = []

    def new_object(self, name: str) -> Any:
        from encord.objects.ontology_object_instance import ObjectInstance

        obj = ObjectInstance(self.b.ont.objects[name], object_hash=self.b.t(f"obj{self.n_obj}"))
        self.n_obj += 1
        return obj

    def new_classification(self, name: str, range_only: bool = False) -> Any:
        from encord.objects.classification_instance import ClassificationInstance

        cls = ClassificationInstance(
            self.b.ont.classifications[name],
            classification_hash=self.b.t(f"cls{self.n_cls}"),
            range_only=range_only,
        )
        self.n_cls += 1
        return cls

    def vehicle_answers(self, obj: Any) -> None:
        a, opt, r = self.b.ont.attrs, self.b.ont.options, self.b.rng
        if r.random() < 0.5:
            obj.set_answer(opt["car"], attribute=a["vehicle.type"])
            obj.set_answer([opt["roof_rack"], opt["tow_bar"]][: r.randint(1, 2)], attribute=a["car.features"])
        else:
            obj.set_answer(opt["truck"], attribute=a["vehicle.type"])
            obj.set_answer(r.choice([opt["two"], opt["three_plus"]]), attribute=a["truck.axles"])
            obj.set_answer(r.choice(("Acme Haulage", "Northwind Freight")), attribute=a["truck.company"])
        obj.set_answer([opt["scratch"], opt["dent"]][: r.randint(1, 2)], attribute=a["vehicle.damage"])
        obj.set_answer(self.b.t("plate"), attribute=a["vehicle.plate"])
        obj.set_answer(round(r.uniform(0, 120), 1), attribute=a["vehicle.speed"])

    def place(self, obj: Any, coords: Callable[[], Any], frames: list[int]) -> None:
        for frame in frames:
            obj.set_for_frames(
                coords(), frame, confidence=round(self.b.rng.uniform(0.5, 1.0), 3), **self.b._meta()
            )
        self.placed.append((min(frames), obj))

    def classify(self, name: str, frames: Any, answer: Any, range_only: bool = False) -> None:
        a, opt, r = self.b.ont.attrs, self.b.ont.options, self.b.rng
        cls = self.new_classification(name, range_only)
        cls.set_for_frames(frames, **self.b._meta())
        if name == "weather" and answer is opt["rain"]:
            cls.set_answer(opt["rain"], attribute=a["weather"])
            cls.set_answer(r.choice([opt["light"], opt["heavy"]]), attribute=a["rain.intensity"])
        else:
            cls.set_answer(answer, attribute=a[name])
        self.row.add_classification_instance(cls)

    def finish(self) -> tuple[int, int]:
        """Add the placed objects to the row; -> (objects, classifications) made."""
        # A parsed row lists objects in the order they first appear (by frame); adding them in that order is
        # what makes the row a fixed point of the SDK's round trip.
        for _, obj in sorted(self.placed, key=lambda item: item[0]):
            self.row.add_object_instance(obj)
        return self.n_obj, self.n_cls


class _Coordinates:
    """A row's coordinates turned into number tokens (`slots`), with each object's extent (`bounds`: min x,
    max x, min y, max y), so a shifted copy of the row keeps every object in the frame."""

    def __init__(self, tokens: _Tokens, n_objects: int) -> None:
        self.t = tokens
        self.slots: dict[str, _Slot] = {}
        self.bounds: list[list[float]] = [[1.0, 0.0, 1.0, 0.0] for _ in range(n_objects)]

    def number(self, obj: int, axis: int, value: float, extent: float = 0.0) -> str:
        b = self.bounds[obj]
        b[2 * axis] = min(b[2 * axis], value)
        b[2 * axis + 1] = max(b[2 * axis + 1], value + extent)
        token = self.t.number()
        self.slots[token[2:]] = _Slot(None, obj, axis, value)
        return token

    def tokenise(self, obj: int, entry: dict[str, Any]) -> None:
        """Every coordinate of one object's frame entry, in place."""
        for key in ("boundingBox", "rotatableBoundingBox"):
            if key in entry:
                box = entry[key]
                box["x"] = self.number(obj, 0, box["x"], box["w"])
                box["y"] = self.number(obj, 1, box["y"], box["h"])
        for key in ("polygon", "polyline", "point", "skeleton"):
            if key in entry:
                for p in entry[key].values():
                    p["x"], p["y"] = self.number(obj, 0, p["x"]), self.number(obj, 1, p["y"])
        for polygon in entry.get("polygons", ()):
            for ring in polygon:
                ring[:] = [self.number(obj, k % 2, v) for k, v in enumerate(ring)]


def _replace_strings(node: Any, replacements: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _replace_strings(v, replacements) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_strings(v, replacements) for v in node]
    if isinstance(node, str):
        return replacements.get(node, node)
    return node


def _split_at_tokens(
    text: str, numbers: Mapping[str, _Slot], tokens: _Tokens
) -> tuple[list[str], list[_Slot]]:
    """A template's text cut at its tokens: the literal parts between them, and what fills each gap."""
    parts: list[str] = []
    slot_list: list[_Slot] = []
    pos = 0
    for m in _TOKEN_RE.finditer(text):
        parts.append(text[pos : m.start()])
        if m.group(1) is not None:
            slot_list.append(numbers[m.group(1)])
        else:
            slot_list.append(_Slot(tokens.key_of[m.group(2)]))
        pos = m.end()
    parts.append(text[pos:])
    return parts, slot_list


class _TemplateBuilder:
    """Builds one template row with the SDK, then turns it into parts and slots."""

    def __init__(self, ont: _Ontology, sdk_ontology: Any, tokens: _Tokens, rng: random.Random) -> None:
        self.ont = ont
        self.sdk_ontology = sdk_ontology
        self.t = tokens
        self.rng = rng
        self.n_objects = 0
        self.n_classifications = 0

    # ---- coordinates, drawn from the template RNG ----
    def _box(self) -> tuple[float, float, float, float]:
        r = self.rng
        w, h = round(r.uniform(0.05, 0.35), 4), round(r.uniform(0.05, 0.35), 4)
        return w, h, round(r.uniform(0.0, 1.0 - w), 4), round(r.uniform(0.0, 1.0 - h), 4)

    def bbox(self) -> Any:
        from encord.objects.coordinates import BoundingBoxCoordinates

        w, h, x, y = self._box()
        return BoundingBoxCoordinates(height=h, width=w, top_left_x=x, top_left_y=y)

    def rbbox(self) -> Any:
        from encord.objects.coordinates import RotatableBoundingBoxCoordinates

        w, h, x, y = self._box()
        theta = round(self.rng.uniform(0.0, 360.0), 2)
        return RotatableBoundingBoxCoordinates(height=h, width=w, top_left_x=x, top_left_y=y, theta=theta)

    def _ring(self, cx: float, cy: float, radius: float, n: int) -> list[Any]:
        from encord.objects.coordinates import PointCoordinate

        return [
            PointCoordinate(
                x=round(cx + radius * math.cos(2 * math.pi * k / n), 4),
                y=round(cy + radius * math.sin(2 * math.pi * k / n), 4),
            )
            for k in range(n)
        ]

    def polygon(self, complex_: bool) -> Any:
        from encord.objects.coordinates import PolygonCoordinates

        r = self.rng
        cx, cy = r.uniform(0.25, 0.45), r.uniform(0.25, 0.75)
        outer = self._ring(cx, cy, 0.18, r.randint(5, 8))
        if not complex_:
            return PolygonCoordinates(values=outer)
        hole = list(reversed(self._ring(cx, cy, 0.06, 4)))
        second = self._ring(r.uniform(0.7, 0.85), r.uniform(0.2, 0.8), 0.08, r.randint(3, 6))
        return PolygonCoordinates(polygons=[[outer, hole], [second]])

    def polyline(self) -> Any:
        from encord.objects.coordinates import PointCoordinate, PolylineCoordinates

        r = self.rng
        n = r.randint(3, 6)
        xs = sorted(round(r.uniform(0.05, 0.95), 4) for _ in range(n))
        return PolylineCoordinates(
            values=[PointCoordinate(x=x, y=round(r.uniform(0.05, 0.95), 4)) for x in xs]
        )

    def point(self) -> Any:
        from encord.objects.coordinates import PointCoordinate

        return PointCoordinate(
            x=round(self.rng.uniform(0.02, 0.98), 4), y=round(self.rng.uniform(0.02, 0.98), 4)
        )

    def skeleton(self) -> Any:
        from encord.objects.coordinates import SkeletonCoordinate

        r = self.rng
        x0, y0 = r.uniform(0.1, 0.8), r.uniform(0.05, 0.15)
        coords = [
            SkeletonCoordinate(
                x=round(x0 + r.uniform(-0.05, 0.05) + 0.05, 4), y=round(y0 + 0.15 * i, 4), name=c.name
            )
            for i, c in enumerate(self.ont.skeleton.skeleton.values())
        ]
        return self.ont.skeleton.create_instance(coords)

    def bitmask(self, width: int, height: int) -> Any:
        import numpy as np
        from encord.objects.bitmask import BitmaskCoordinates

        r = self.rng
        mask = np.zeros((height, width), dtype=bool)
        top, left = r.randint(0, height // 2), r.randint(0, width // 2)
        mask[top : top + height // 4, left : left + width // 3] = True
        yy, xx = np.ogrid[:height, :width]
        cy, cx, rad = (
            r.randint(height // 4, 3 * height // 4),
            r.randint(width // 4, 3 * width // 4),
            height // 8,
        )
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rad * rad
        return BitmaskCoordinates(mask)

    # ---- the label row ----
    def build(self, kind: _Kind, variant: int) -> _Template:
        from encord.objects.ontology_labels_impl import LabelRowV2
        from encord.orm.label_row import LabelRowMetadata

        t = self.t
        if kind.data_type == "img_group":
            unit_hashes = [t(f"u{i}_hash") for i in range(len(kind.units))]
        else:
            unit_hashes = [t("data_hash")]
        # Audio (ms) and text (character) ranges are checked against the frame count while labels are added.
        frames = {"audio": int((kind.duration or 1.0) * 44100), "plain_text": 1_000_000}.get(kind.data_type)
        first = kind.units[0]
        metadata = LabelRowMetadata.from_dict(
            {
                "label_hash": t("label_hash"),
                "branch_name": "main",
                "data_hash": t("data_hash"),
                "dataset_hash": t("dataset_hash"),
                "dataset_title": t("dataset_title"),
                "data_title": t("data_title"),
                "data_type": kind.data_type.upper(),
                "data_link": None,
                "label_status": "LABELLED",
                "number_of_frames": frames or kind.frames,
                "frames_per_second": kind.fps,
                "duration": kind.duration,
                "width": first.width or None,
                "height": first.height or None,
                "spaces": {},
            }
        )
        row = LabelRowV2(metadata, None, self.sdk_ontology)  # type: ignore[arg-type]
        row.from_labels_dict(self._empty_row(kind, unit_hashes))
        self._add_labels(row, kind, variant)
        encoded: dict[str, Any] = row.to_encord_dict()

        check = LabelRowV2(metadata, None, self.sdk_ontology)  # type: ignore[arg-type]
        check.from_labels_dict(orjson.loads(orjson.dumps(encoded)))
        if check.to_encord_dict() != encoded:
            raise GenerateError(f"template {kind.kind}/{variant} does not survive an SDK round trip")
        return self._tokenise(kind, encoded)

    def _empty_row(self, kind: _Kind, unit_hashes: list[str]) -> dict[str, Any]:
        t = self.t
        units: dict[str, Any] = {}
        for i, (unit, unit_hash) in enumerate(zip(kind.units, unit_hashes, strict=True)):
            grouped = kind.data_type == "img_group"
            entry: dict[str, Any] = {
                "data_hash": unit_hash,
                "data_title": t(f"u{i}_title") if grouped else t("data_title"),
                "data_link": t(f"u{i}_link") if grouped else t("data_link"),
                "data_type": unit.mime,
                "data_sequence": str(i) if grouped else 0,
                "labels": {},
            }
            if unit.width:
                entry["width"], entry["height"] = unit.width, unit.height
            if kind.data_type == "audio":
                entry.update(audio_codec="mp3" if unit.mime == "audio/mpeg" else "pcm_s16le")
                entry.update(audio_sample_rate=44100, audio_bit_depth=16, audio_num_channels=2)
            units[unit_hash] = entry
        return {
            "label_hash": t("label_hash"),
            "branch_name": "main",
            "created_at": _long_time(_TEMPLATE_EPOCH),
            "last_edited_at": _long_time(_TEMPLATE_EPOCH),
            "data_hash": t("data_hash"),
            "dataset_hash": t("dataset_hash"),
            "dataset_title": t("dataset_title"),
            "data_title": t("data_title"),
            "data_type": kind.data_type,
            "annotation_task_status": "QUEUED",
            "object_answers": {},
            "classification_answers": {},
            "object_actions": {},
            "label_status": "LABELLED",
            "data_units": units,
        }

    def _meta(self) -> dict[str, Any]:
        return {
            "created_at": _TEMPLATE_EPOCH + timedelta(seconds=1),
            "last_edited_at": _TEMPLATE_EPOCH + timedelta(seconds=2),
            "created_by": self.t("annotator"),
            "last_edited_by": self.t("editor"),
        }

    def _add_labels(self, row: Any, kind: _Kind, variant: int) -> None:
        lab = _Labeller(self, row)
        label = {
            "image": self._label_image,
            "img_group": self._label_image_group,
            "video": self._label_video,
            "dicom": self._label_slices,
            "nifti": self._label_slices,
            "pdf": self._label_slices,
            "audio": self._label_audio,
            "plain_text": self._label_text,
        }.get(kind.data_type)
        if label is not None:
            label(lab, kind, variant)
        self.n_objects, self.n_classifications = lab.finish()

    def _label_image(self, lab: _Labeller, kind: _Kind, variant: int) -> None:
        opt, a, r = self.ont.options, self.ont.attrs, self.rng
        w, h = kind.units[0].width, kind.units[0].height
        if variant == 0:
            for _ in range(r.randint(1, 3)):
                obj = lab.new_object("vehicle")
                lab.vehicle_answers(obj)
                lab.place(obj, self.bbox, [0])
            obj = lab.new_object("building")
            obj.set_answer(r.choice([opt["brick"], opt["glass"]]))
            lab.place(obj, lambda: self.polygon(complex_=False), [0])
            lab.classify("weather", 0, r.choice([opt["sunny"], opt["rain"]]))
        elif variant == 1:
            obj = lab.new_object("pedestrian")
            obj.set_answer(opt["walking"], attribute=a["pedestrian.pose"])
            lab.place(obj, self.rbbox, [0])
            lab.place(lab.new_object("pose"), self.skeleton, [0])
            obj = lab.new_object("landmark")
            obj.set_answer(self.t("landmark"), attribute=a["landmark.name"])
            lab.place(obj, self.point, [0])
            obj = lab.new_object("lane")
            obj.set_answer([opt["white"]], attribute=a["lane.colour"])
            lab.place(obj, self.polyline, [0])
            lab.classify("tags", 0, [opt["urban"], opt["night"]])
            lab.classify("caption", 0, self.t("caption"))
        elif variant == 2:
            obj = lab.new_object("segment")
            obj.set_answer(opt["sky"], attribute=a["segment.class"])
            lab.place(obj, lambda: self.bitmask(w, h), [0])
            obj = lab.new_object("building")
            lab.place(obj, lambda: self.polygon(complex_=True), [0])
            lab.classify("quality", 0, round(r.uniform(0, 10), 2))
        # variant 3: a label row that exists but holds no labels yet

    def _label_image_group(self, lab: _Labeller, kind: _Kind, variant: int) -> None:
        from encord.objects.frames import Range

        opt, frames = self.ont.options, kind.frames
        if kind.kind == "image_sequence":
            track = lab.new_object("vehicle")
            lab.vehicle_answers(track)
            step = 1 if variant == 0 else 2
            lab.place(track, self.bbox, list(range(0, frames, step)))
            lab.place(lab.new_object("landmark"), self.point, list(range(1, frames, 3)))
            lab.classify("weather", [Range(0, frames // 2)], opt["sunny"])
        else:
            for frame, unit in enumerate(kind.units):
                lab.place(lab.new_object("building"), partial(self.polygon, frame % 2 == 1), [frame])
                if frame == 1:
                    lab.place(
                        lab.new_object("segment"), partial(self.bitmask, unit.width, unit.height), [frame]
                    )
            lab.place(lab.new_object("lane"), self.polyline, [0, len(kind.units) - 1])
            lab.classify("tags", [0, 2], [opt["blurry"]])

    def _label_video(self, lab: _Labeller, kind: _Kind, variant: int) -> None:
        from encord.objects.frames import Range

        opt, a, frames = self.ont.options, self.ont.attrs, kind.frames
        track = lab.new_object("vehicle")
        lab.vehicle_answers(track)
        keyframes = list(range(0, frames, 3))
        lab.place(track, self.bbox, keyframes)
        # One dynamic answer per object: the SDK reverses their order on every round trip.
        track.set_answer(opt["occluded_yes"], attribute=a["vehicle.occluded"], frames=keyframes[2:5])
        walker = lab.new_object("pedestrian")
        lab.place(walker, self.rbbox, list(range(5, frames // 2, 5)))
        walker.set_answer("crossing", attribute=a["pedestrian.activity"], frames=5)
        lab.place(lab.new_object("building"), lambda: self.polygon(complex_=variant == 1), [0, frames - 1])
        lab.place(lab.new_object("pose"), self.skeleton, list(range(2, frames, 10)))
        lab.place(lab.new_object("lane"), self.polyline, [frames // 3])
        lab.classify("weather", [Range(0, frames // 3), Range(frames // 2, frames - 1)], opt["rain"])
        lab.classify("tags", [Range(0, frames - 1)], [opt["urban"]])

    def _label_slices(self, lab: _Labeller, kind: _Kind, variant: int) -> None:
        """DICOM, NIfTI and PDF: labels on slices or pages."""
        from encord.objects.frames import Range

        opt, a, r, dt = self.ont.options, self.ont.attrs, self.rng, kind.data_type
        # A fixture row cannot say how many slices or pages its media has, so a listing built from it says
        # 1 (the emulator does): the SDK then rejects NIFTI and PDF labels past frame 0. DICOM has no last
        # frame in the SDK, so only DICOM spreads its labels over the slices.
        span = kind.frames if dt == "dicom" else 1
        u = kind.units[0]
        if dt == "pdf":
            obj = lab.new_object("vehicle")
            lab.vehicle_answers(obj)
            lab.place(obj, self.bbox, [0])
            lab.place(lab.new_object("lane"), self.polyline, [0])
            lab.classify("caption", [Range(0, span - 1)], self.t("caption"))
        else:
            lab.place(lab.new_object("building"), partial(self.polygon, True), list(range(2 % span, span, 4)))
            lab.place(lab.new_object("landmark"), self.point, [span // 2])
            if variant == 0:
                seg = lab.new_object("segment")
                seg.set_answer(opt["road"], attribute=a["segment.class"])
                lab.place(seg, partial(self.bitmask, u.width, u.height), [span // 3])
            lab.classify("quality", [Range(0, span - 1)], round(r.uniform(0, 10), 2))

    def _label_audio(self, lab: _Labeller, kind: _Kind, variant: int) -> None:
        from encord.objects.coordinates import AudioCoordinates
        from encord.objects.frames import Range

        opt, r = self.ont.options, self.rng
        duration_ms = int((kind.duration or 1.0) * 1000)
        for _ in range(2 + variant):
            obj = lab.new_object("sound")
            obj.set_answer(r.choice([opt["adult"], opt["child"]]))
            start = r.randint(0, duration_ms - 600)
            obj.set_for_frames(
                AudioCoordinates(range=[Range(start, start + r.randint(100, 500))]), 0, **self._meta()
            )
            lab.row.add_object_instance(obj)
        lab.classify("weather", 0, opt["sunny"], range_only=True)

    def _label_text(self, lab: _Labeller, kind: _Kind, variant: int) -> None:
        from encord.objects.coordinates import TextCoordinates
        from encord.objects.frames import Range

        opt, r = self.ont.options, self.rng
        for i in range(2 + variant):
            obj = lab.new_object("entity")
            obj.set_answer(r.choice([opt["person"], opt["organisation"]]))
            start = 40 * i + r.randint(0, 20)
            obj.set_for_frames(
                TextCoordinates(range=[Range(start, start + r.randint(3, 18))]), 0, **self._meta()
            )
            lab.row.add_object_instance(obj)
        lab.classify("caption", 0, self.t("caption"), range_only=True)

    def _tokenise(self, kind: _Kind, encoded: dict[str, Any]) -> _Template:
        t = self.t
        encoded.update(
            branch_name=t("branch"),
            created_at=t("row_created"),
            last_edited_at=t("row_edited"),
            annotation_task_status=t("task_status"),
            label_status=t("label_status"),
        )
        times = {
            _long_time(_TEMPLATE_EPOCH + timedelta(seconds=1)): t("obj_created"),
            _long_time(_TEMPLATE_EPOCH + timedelta(seconds=2)): t("obj_edited"),
        }
        coordinates = _Coordinates(t, self.n_objects)
        obj_index = {t(f"obj{i}"): i for i in range(self.n_objects)}
        for unit in encoded["data_units"].values():
            labels = unit["labels"]
            frame_labels = [labels] if "objects" in labels else list(labels.values())
            for frame in frame_labels:
                for entry in frame["objects"]:
                    coordinates.tokenise(obj_index[entry["objectHash"]], entry)
        text = orjson.dumps(_replace_strings(encoded, times)).decode()
        parts, slot_list = _split_at_tokens(text, coordinates.slots, t)
        shift_bounds = [
            (
                max(-MAX_SHIFT, -b[0]),
                min(MAX_SHIFT, 1.0 - b[1]),
                max(-MAX_SHIFT, -b[2]),
                min(MAX_SHIFT, 1.0 - b[3]),
            )
            for b in coordinates.bounds
        ]
        return _Template(
            kind=kind.kind,
            layout=kind,
            data_type=kind.data_type,
            parts=parts,
            slots=slot_list,
            n_objects=self.n_objects,
            n_classifications=self.n_classifications,
            unit_count=len(kind.units),
            shift_bounds=shift_bounds,
        )


def _sdk_ontology(structure: Any) -> Any:
    from encord.ontology import Ontology
    from encord.orm.ontology import Ontology as OrmOntology

    orm = OrmOntology(
        title="synthetic",
        structure=structure,
        ontology_hash="synthetic",
        created_at=_TEMPLATE_EPOCH,
        last_edited_at=_TEMPLATE_EPOCH,
    )
    return Ontology(orm, None)  # type: ignore[arg-type]


@lru_cache(maxsize=4)
def _build_templates(seed: int) -> tuple[_Template, ...]:
    """The templates for a seed (cached: building them is most of the cost of a small fixture)."""
    tokens = _Tokens()
    ont = _build_ontology(lambda name: tokens(f"f:{name}"))
    builder = _TemplateBuilder(ont, _sdk_ontology(ont.structure), tokens, random.Random(f"templates:{seed}"))
    return tuple(builder.build(kind, variant) for kind, variant in _kinds())


# Stamping rows


def _render(template: _Template, values: Mapping[str, str], shifts: list[tuple[float, float]]) -> str:
    parts = template.parts
    out = [parts[0]]
    for slot, part in zip(template.slots, parts[1:], strict=True):
        if slot.key is not None:
            out.append(values[slot.key])
        else:
            v = round(slot.base + shifts[slot.obj][slot.axis], 4)
            out.append(repr(min(1.0, max(0.0, v))))
        out.append(part)
    return "".join(out)


class _Project:
    """Writes one project's fixture directory, one row at a time."""

    def __init__(self, rng: random.Random, feature_names: list[str], index: int, seed: int) -> None:
        self.rng = rng
        self.project_hash = self.uuid()
        self.index = index
        self.seed = seed
        used: set[str] = set()
        self.features: dict[str, str] = {}
        for name in feature_names:
            value = self.hex_hash()
            while value in used:
                value = self.hex_hash()
            used.add(value)
            self.features[name] = value
        self.stage_uuids = [self.uuid() for _ in STAGES]
        self.datasets = [(self.uuid(), f"Synthetic dataset {chr(ord('A') + i)}") for i in range(3)]
        self.start = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=seed % 97)
        self.recent_times: list[datetime] = []

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def hex_hash(self) -> str:
        # featureNodeHashes the SDK mints are the first 8 hex digits of a uuid4.
        return f"{self.rng.getrandbits(32):08x}"

    def short_hash(self) -> str:
        # The SDK's own object hashes are 8 base64 characters of 6 random bytes.
        return base64.b64encode(self.rng.getrandbits(48).to_bytes(6, "big")).decode()

    def project_json(self) -> dict[str, Any]:
        ont = _build_ontology(lambda name: self.features[name])
        return {
            "title": f"Synthetic project {self.index + 1} (seed {self.seed})",
            "ontology": ont.structure.to_dict(),
            "workflow": {
                "stages": [
                    {"uuid": u, "title": s.title, "stageType": s.stage_type}
                    for u, s in zip(self.stage_uuids, STAGES, strict=True)
                ]
            },
        }

    def edit_time(self) -> datetime:
        r = self.rng
        if self.recent_times and r.random() < SHARED_TIMESTAMP_SHARE:
            return r.choice(self.recent_times)
        moment = self.start + timedelta(seconds=r.randrange(EDIT_WINDOW_DAYS * 86400))
        self.recent_times.append(moment)
        if len(self.recent_times) > 16:
            self.recent_times.pop(0)
        return moment

    def stage(self) -> tuple[StageSpec, str]:
        spec = self.rng.choices(STAGES, weights=[s.weight for s in STAGES])[0]
        return spec, self.rng.choice(spec.task_statuses)

    def unit_values(self, template: _Template, number: int) -> dict[str, str]:
        dataset_hash, dataset_title = self.datasets[number % len(self.datasets)]
        stem = f"{template.kind}_{number:06d}"
        ext = {
            "image": ".jpg",
            "video": ".mp4",
            "dicom": ".dcm",
            "nifti": ".nii.gz",
            "pdf": ".pdf",
            "audio": ".mp3",
            "plain_text": ".txt",
        }.get(template.kind, "")
        title = stem + ext
        values = {
            "data_hash": self.uuid(),
            "data_title": title,
            "data_link": f"{MEDIA_ROOT}/{dataset_hash}/{title}",
            "dataset_hash": dataset_hash,
            "dataset_title": dataset_title,
        }
        for i in range(template.unit_count if template.data_type == "img_group" else 0):
            unit_title = f"{stem}/frame_{i:03d}.jpg"
            values[f"u{i}_hash"] = self.uuid()
            values[f"u{i}_title"] = unit_title
            values[f"u{i}_link"] = f"{MEDIA_ROOT}/{dataset_hash}/{unit_title}"
        return values

    def row_line(
        self,
        template: _Template,
        base: Mapping[str, str],
        branch: str,
        stage: StageSpec,
        task_status: str,
    ) -> str:
        r = self.rng
        edited = self.edit_time()
        created = edited - timedelta(seconds=r.randrange(14 * 86400))
        obj_created = created + (edited - created) / 3
        values = dict(base)
        values.update(
            label_hash=self.uuid(),
            branch=branch,
            row_created=_long_time(created),
            row_edited=_long_time(edited),
            obj_created=_long_time(obj_created),
            obj_edited=_long_time(edited),
            annotator=r.choice(ANNOTATORS),
            editor=r.choice(ANNOTATORS),
            task_status=task_status,
            label_status=stage.label_status,
            plate=f"{r.choice('ABCDEFGH')}{r.choice('KLMNPRST')}-{r.randrange(10000):04d}",
            caption=f"synthetic caption {r.randrange(100000)}",
            landmark=f"landmark {r.randrange(1000)}",
        )
        for i in range(template.n_objects):
            values[f"obj{i}"] = self.short_hash()
        for i in range(template.n_classifications):
            values[f"cls{i}"] = self.short_hash()
        shifts = [
            (round(r.uniform(lo_x, hi_x), 4), round(r.uniform(lo_y, hi_y), 4))
            for lo_x, hi_x, lo_y, hi_y in template.shift_bounds
        ]
        row = _render(template, values, shifts)
        return f'{{"row":{row},"stage":{orjson.dumps(stage.title).decode()},"task_status":"{task_status}"}}\n'

    def unlabelled_line(self, number: int) -> str:
        r = self.rng
        dataset_hash, dataset_title = self.datasets[number % len(self.datasets)]
        video = r.random() < 0.25
        title = f"{'video' if video else 'image'}_{number:06d}_unlabelled.{'mp4' if video else 'jpg'}"
        width, height = r.choice(((640, 480), (1280, 720), (1920, 1080)))
        record = {
            "data_hash": self.uuid(),
            "data_title": title,
            "data_type": "VIDEO" if video else "IMAGE",
            "dataset_hash": dataset_hash,
            "dataset_title": dataset_title,
            "stage": STAGES[0].title,
            "task_status": "QUEUED",
            "width": width,
            "height": height,
        }
        return orjson.dumps(record).decode() + "\n"

    def write(
        self,
        directory: Path,
        rows: int,
        templates: tuple[_Template, ...],
        base: dict[str, str],
        tick: Callable[[], None],
    ) -> None:
        r = self.rng
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "project.json").write_bytes(
            orjson.dumps(self.project_json(), option=orjson.OPT_INDENT_2)
        )
        weights = {kind: w for kind, _, w in DATA_KINDS}
        by_kind: dict[str, list[_Template]] = {}
        by_layout: dict[_Kind, list[_Template]] = {}
        for template in templates:
            by_kind.setdefault(template.kind, []).append(template)
            by_layout.setdefault(template.layout, []).append(template)
        kinds = list(by_kind)
        kind_weights = [weights[k] for k in kinds]
        written = 0
        number = 0
        with (
            (directory / "rows.jsonl").open("w", encoding="utf-8", newline="\n") as rows_file,
            (directory / "unlabelled.jsonl").open("w", encoding="utf-8", newline="\n") as unlabelled_file,
        ):
            while written < rows:
                number += 1
                if number % UNLABELLED_EVERY == 0:
                    unlabelled_file.write(self.unlabelled_line(number))
                    continue
                # The first units walk every template once: even a small fixture covers every shape and type.
                if number <= len(templates):
                    template = templates[number - 1]
                else:
                    template = r.choice(by_kind[r.choices(kinds, weights=kind_weights)[0]])
                stage, task_status = self.stage()
                unit = {**base, **self.unit_values(template, number)}
                written += self._emit(rows_file, template, unit, "main", stage, task_status, tick)
                if r.random() < CONSENSUS_SHARE or number == 2:
                    for branch in ("consensus-1", "consensus-2")[: r.randint(1, 2)]:
                        if written >= rows:
                            break
                        # Another annotator may draw another shape mix on the same media.
                        other = r.choice(by_layout[template.layout])
                        written += self._emit(rows_file, other, unit, branch, stage, task_status, tick)

    def _emit(
        self,
        out: TextIO,
        template: _Template,
        unit: Mapping[str, str],
        branch: str,
        stage: StageSpec,
        task_status: str,
        tick: Callable[[], None],
    ) -> int:
        out.write(self.row_line(template, unit, branch, stage, task_status))
        tick()
        return 1


def generate(
    out: Path,
    rows: int,
    *,
    seed: int = 0,
    projects: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Write `projects` synthetic projects of `rows` label rows each (all branches) under `out`.

    The same arguments always give byte-identical files. `progress` is called with the number of rows written
    so far (over all projects) after each row. Returns the project hashes, in the order written.
    """
    if rows < 1:
        raise GenerateError(f"rows must be at least 1, got {rows}")
    if projects < 1:
        raise GenerateError(f"projects must be at least 1, got {projects}")
    templates = _build_templates(seed)
    names = _feature_names()
    master = random.Random(f"projects:{seed}")
    hashes: list[str] = []
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done)

    for index in range(projects):
        project = _Project(random.Random(master.getrandbits(64)), names, index, seed)
        base = {f"f:{name}": project.features[name] for name in names}
        project.write(Path(out) / project.project_hash, rows, templates, base, tick)
        hashes.append(project.project_hash)
    return hashes


# What a listing must say about a row


def label_row_metadata(record: Mapping[str, Any], *, stage_uuid: str | None = None) -> dict[str, Any]:
    """The `list_label_rows_v2` metadata item for a fixture record, as `LabelRowMetadata.from_dict` reads it.

    The SDK takes `number_of_frames`, `duration` and `frames_per_second` from the listing, not from the row,
    and `to_encord_dict()` writes `data_duration`/`data_fps` back from them; so a server must derive them like
    this for an initialised row to equal the fixture row: videos from fps x duration, image groups from their
    units, audio from duration x sample rate, and 1 otherwise (DICOM has no last frame in the SDK, and NIFTI
    and PDF rows are only labelled on frame 0, as nothing in a row says how many slices or pages there are).
    """
    row = record["row"]
    units = list(row["data_units"].values())
    first = units[0]
    data_type: str = row["data_type"]
    fps = first.get("data_fps")
    duration = first.get("data_duration")
    if data_type == "video" and fps and duration:
        frames = round(fps * duration)
    elif data_type == "img_group":
        frames = len(units)
    elif data_type == "audio" and duration and first.get("audio_sample_rate"):
        frames = math.ceil(duration * first["audio_sample_rate"])
    else:
        frames = 1
    return {
        "label_hash": row["label_hash"],
        "branch_name": row["branch_name"],
        "created_at": row["created_at"],
        "last_edited_at": row["last_edited_at"],
        "data_hash": row["data_hash"],
        "dataset_hash": row["dataset_hash"],
        "dataset_title": row["dataset_title"],
        "data_title": row["data_title"],
        "data_type": data_type.upper(),
        "data_link": first.get("data_link") if len(units) == 1 else None,
        "label_status": row["label_status"],
        "annotation_task_status": record["task_status"],
        "workflow_graph_node": None if stage_uuid is None else {"uuid": stage_uuid, "title": record["stage"]},
        "is_shadow_data": False,
        "number_of_frames": frames,
        "frames_per_second": None if data_type == "pdf" else fps,
        "duration": duration,
        "width": first.get("width"),
        "height": first.get("height"),
        "file_type": first.get("data_type"),
        "spaces": {},
    }


# CLI


def generate_main(args: argparse.Namespace) -> int:
    """`encord-emulator generate --out DIR --rows N [--seed S] [--projects K]`; a bad value exits 2."""
    total = args.rows * args.projects
    step = max(1, total // 10)

    def report(done: int) -> None:
        if done % step == 0 or done == total:
            print(f"generate: {done}/{total} rows ({100 * done // total}%)", file=sys.stderr, flush=True)

    try:
        hashes = generate(Path(args.out), args.rows, seed=args.seed, projects=args.projects, progress=report)
    except GenerateError as exc:
        print(f"encord-emulator: error: {exc}", file=sys.stderr)
        return 2
    for project_hash in hashes:
        print(project_hash)
    return 0


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a rows.jsonl or unlabelled.jsonl file, one at a time."""
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield orjson.loads(line)

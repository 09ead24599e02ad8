"""Hand-written label rows for the COCO tests, built with the SDK's own objects (then `to_encord_dict()`).

Edge cases on purpose: a box and a polygon with holes touching the right and bottom border, a polygon
smaller than a pixel, an image with nothing on it, a title without an extension, a skeleton with occluded
and invisible points, a nested attribute answer, dynamic answers on two videos, and a classification-only
video frame.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, BinaryIO

from encord_mirror.domain.models import StoredObject
from encord_mirror.domain.ports import ObjectStore, PreconditionFailedError

EPOCH = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Fixture:
    def __init__(self) -> None:
        from encord.objects import OntologyStructure
        from encord.objects.attributes import (
            ChecklistAttribute,
            NumericAttribute,
            RadioAttribute,
            TextAttribute,
        )
        from encord.objects.common import Shape
        from encord.objects.skeleton_template import SkeletonTemplate, SkeletonTemplateCoordinate

        s = OntologyStructure()
        self.structure = s
        self.box = s.add_object("Box", Shape.BOUNDING_BOX, feature_node_hash="f-box")
        self.colour = self.box.add_attribute(RadioAttribute, "Colour", feature_node_hash="f-colour")
        self.red = self.colour.add_option("Red", feature_node_hash="f-red")
        self.blue = self.colour.add_option("Blue", feature_node_hash="f-blue")
        self.shade = self.red.add_nested_attribute(TextAttribute, "Shade", feature_node_hash="f-shade")
        self.flags = self.box.add_attribute(
            ChecklistAttribute, "Flags", feature_node_hash="f-flags", dynamic=True
        )
        self.moving = self.flags.add_option("Moving", feature_node_hash="f-moving")
        self.parked = self.flags.add_option("Parked", feature_node_hash="f-parked")
        self.speed = self.box.add_attribute(NumericAttribute, "Speed", feature_node_hash="f-speed")
        self.region = s.add_object("Region", Shape.POLYGON, feature_node_hash="f-region")
        self.line = s.add_object("Line", Shape.POLYLINE, feature_node_hash="f-line")
        self.spot = s.add_object("Spot", Shape.POINT, feature_node_hash="f-spot")
        self.mask = s.add_object("Mask", Shape.BITMASK, feature_node_hash="f-mask")
        self.tilted = s.add_object("Tilted", Shape.ROTATABLE_BOUNDING_BOX, feature_node_hash="f-tilted")
        template = SkeletonTemplate(
            name="Pose",
            width=1.0,
            height=1.0,
            skeleton={
                str(i): SkeletonTemplateCoordinate(
                    x=0.5, y=0.2 * i, name=n, color="#00AA00", value=n, feature_hash=f"f-{n}"
                )
                for i, n in enumerate(("head", "hand", "foot"))
            },
            skeleton_edges={"0": {"1": {"color": "#00AA00"}}, "1": {"2": {}}},
        )
        self.pose, self.pose_template = s.add_skeleton_object("Pose", template, feature_node_hash="f-pose")
        self.weather = s.add_classification(feature_node_hash="f-weather")
        self.weather_attr = self.weather.add_attribute(
            RadioAttribute, "Weather", feature_node_hash="f-weather-attr"
        )
        self.sunny = self.weather_attr.add_option("Sunny", feature_node_hash="f-sunny")

        from encord.ontology import Ontology
        from encord.orm.ontology import Ontology as OrmOntology

        orm = OrmOntology(
            title="t", structure=s, ontology_hash="ont-1", created_at=EPOCH, last_edited_at=EPOCH
        )
        self.sdk_ontology = Ontology(orm, None)  # type: ignore[arg-type]

    def ontology(self) -> dict[str, Any]:
        return dict(self.structure.to_dict())

    # -- rows --------------------------------------------------------------------------------------
    def _row(
        self, label_hash: str, title: str, data_type: str, width: int, height: int, frames: int = 1
    ) -> Any:
        from encord.objects.ontology_labels_impl import LabelRowV2
        from encord.orm.label_row import LabelRowMetadata

        mime = {"image": "image/jpeg", "video": "video/mp4"}[data_type]
        meta = LabelRowMetadata.from_dict(
            {
                "label_hash": label_hash,
                "branch_name": "main",
                "data_hash": f"d-{label_hash}",
                "dataset_hash": "ds",
                "dataset_title": "Dataset",
                "data_title": title,
                "data_type": data_type.upper(),
                "data_link": f"https://example.test/{title}",
                "label_status": "LABELLED",
                "number_of_frames": frames,
                "frames_per_second": 10.0 if data_type == "video" else None,
                "duration": frames / 10.0 if data_type == "video" else None,
                "width": width,
                "height": height,
                "spaces": {},
            }
        )
        row = LabelRowV2(meta, None, self.sdk_ontology)  # type: ignore[arg-type]
        unit = {
            "data_hash": f"d-{label_hash}",
            "data_title": title,
            "data_link": f"https://example.test/{title}",
            "data_type": mime,
            "data_sequence": 0,
            "labels": {},
            "width": width,
            "height": height,
        }
        if data_type == "video":
            unit.update(data_fps=10.0, data_duration=frames / 10.0)
        row.from_labels_dict(
            {
                "label_hash": label_hash,
                "branch_name": "main",
                "created_at": "Fri, 02 Jan 2026 03:04:05 UTC",
                "last_edited_at": "Fri, 02 Jan 2026 03:04:05 UTC",
                "data_hash": f"d-{label_hash}",
                "dataset_hash": "ds",
                "dataset_title": "Dataset",
                "data_title": title,
                "data_type": data_type,
                "annotation_task_status": "QUEUED",
                "object_answers": {},
                "classification_answers": {},
                "object_actions": {},
                "label_status": "LABELLED",
                "data_units": {f"d-{label_hash}": unit},
            }
        )
        return row

    def _obj(self, ontology_object: Any, object_hash: str) -> Any:
        from encord.objects.ontology_object_instance import ObjectInstance

        return ObjectInstance(ontology_object, object_hash=object_hash)

    def street(self) -> dict[str, Any]:
        """An image with every shape; the box and the holed polygon touch the right and bottom border."""
        import numpy as np
        from encord.objects.bitmask import BitmaskCoordinates
        from encord.objects.coordinates import (
            BoundingBoxCoordinates,
            PointCoordinate,
            PolygonCoordinates,
            PolylineCoordinates,
            RotatableBoundingBoxCoordinates,
            SkeletonCoordinate,
            SkeletonCoordinates,
            Visibility,
        )

        P = PointCoordinate
        row = self._row("row-street", "street.jpg", "image", 40, 30)
        box = self._obj(self.box, "o-box")
        box.set_for_frames(BoundingBoxCoordinates(height=0.5, width=0.25, top_left_x=0.75, top_left_y=0.5), 0)
        box.set_answer(self.red, attribute=self.colour)
        box.set_answer("crimson", attribute=self.shade)
        box.set_answer(42.5, attribute=self.speed)
        row.add_object_instance(box)
        holed = self._obj(self.region, "o-holed")
        outer = [P(x=0.5, y=0.4), P(x=1.0, y=0.4), P(x=1.0, y=1.0), P(x=0.5, y=1.0)]
        hole = [P(x=0.6, y=0.6), P(x=0.8, y=0.6), P(x=0.8, y=0.8), P(x=0.6, y=0.8)]
        part = [P(x=0.05, y=0.05), P(x=0.3, y=0.1), P(x=0.2, y=0.35)]
        holed.set_for_frames(PolygonCoordinates(polygons=[[outer, hole], [part]]), 0)
        row.add_object_instance(holed)
        tiny = self._obj(self.region, "o-tiny")
        tiny.set_for_frames(
            PolygonCoordinates(values=[P(x=0.5, y=0.5), P(x=0.51, y=0.5), P(x=0.505, y=0.51)]), 0
        )
        row.add_object_instance(tiny)
        line = self._obj(self.line, "o-line")
        line.set_for_frames(
            PolylineCoordinates(values=[P(x=0.1, y=0.9), P(x=0.4, y=0.7), P(x=0.45, y=0.95)]), 0
        )
        row.add_object_instance(line)
        edge = self._obj(self.line, "o-edge")
        edge.set_for_frames(PolylineCoordinates(values=[P(x=0.0, y=0.0), P(x=1.0, y=0.5)]), 0)
        row.add_object_instance(edge)
        spot = self._obj(self.spot, "o-spot")
        spot.set_for_frames(P(x=1.0, y=1.0), 0)
        row.add_object_instance(spot)
        tilted = self._obj(self.tilted, "o-tilted")
        tilted.set_for_frames(
            RotatableBoundingBoxCoordinates(height=0.2, width=0.3, top_left_x=0.1, top_left_y=0.6, theta=30),
            0,
        )
        row.add_object_instance(tilted)
        points = [
            SkeletonCoordinate(x=0.5, y=0.1, name="head", visibility=Visibility.VISIBLE),
            SkeletonCoordinate(x=0.55, y=0.3, name="hand", visibility=Visibility.OCCLUDED),
            SkeletonCoordinate(x=0.5, y=0.5, name="foot", visibility=Visibility.INVISIBLE),
        ]
        pose_obj = self._obj(self.pose, "o-pose")
        pose_obj.set_for_frames(SkeletonCoordinates(values=points, name="Pose"), 0)
        row.add_object_instance(pose_obj)
        bits = np.zeros((30, 40), dtype=bool)
        bits[3:9, 30:38] = True
        bits[20:30, 0:4] = True
        mask = self._obj(self.mask, "o-mask")
        mask.set_for_frames(BitmaskCoordinates(bits), 0)
        row.add_object_instance(mask)
        return dict(row.to_encord_dict())

    def empty(self) -> dict[str, Any]:
        """An image with nothing on it, and a title without an extension."""
        return dict(self._row("row-empty", "scan_0001", "image", 20, 10).to_encord_dict())

    def video(self, label_hash: str, *, object_hash: str, dynamic_frame: int) -> dict[str, Any]:
        """A video with a box on frames 0, 2 and 3 (dynamic `Flags` answered on one frame), and a
        classification on frame 5 only (a classification-only image)."""
        from encord.objects.classification_instance import ClassificationInstance
        from encord.objects.coordinates import BoundingBoxCoordinates

        row = self._row(label_hash, f"{label_hash}.mp4", "video", 64, 48, frames=8)
        box = self._obj(self.box, object_hash)
        for frame in (0, 2, 3):
            coords = BoundingBoxCoordinates(height=0.2, width=0.2, top_left_x=0.1 * frame, top_left_y=0.1)
            box.set_for_frames(coords, frame)
        box.set_answer(self.blue, attribute=self.colour)
        box.set_answer([self.moving], attribute=self.flags, frames=dynamic_frame)
        row.add_object_instance(box)
        weather = ClassificationInstance(self.weather, classification_hash=f"c-{label_hash}")
        weather.set_for_frames(5)
        weather.set_answer(self.sunny)
        row.add_classification_instance(weather)
        return dict(row.to_encord_dict())

    def rows(self) -> list[dict[str, Any]]:
        return [
            self.street(),
            self.empty(),
            self.video("row-video-a", object_hash="o-car-a", dynamic_frame=2),
            self.video("row-video-b", object_hash="o-car-b", dynamic_frame=3),
        ]


@lru_cache(maxsize=1)
def fixture() -> Fixture:
    return Fixture()


def coco_exporter(rows: list[dict[str, Any]], ontology: dict[str, Any]) -> dict[str, Any]:
    """Encord's own CocoExporter on deep copies (so the test never depends on what it mutates), passed
    through JSON so numpy floats compare as plain floats."""
    import copy

    import orjson
    from encord.objects.ontology_structure import OntologyStructure
    from encord.utilities.coco.exporter import CocoExporter

    out = CocoExporter(copy.deepcopy(rows), OntologyStructure.from_dict(copy.deepcopy(ontology))).export()
    return dict(orjson.loads(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)))


class MemoryLake:
    """An in-memory `ObjectStore` (checked against the port by mypy: see `as_port`) that records its calls."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.gets: list[str] = []
        self.puts: list[str] = []
        self.opened: list[str] = []  # read as a stream (open)
        self.streamed: list[str] = []  # written from chunks (put_stream)
        self._version = 0

    def get(self, key: str) -> StoredObject | None:
        self.gets.append(key)
        found = self.objects.get(key)
        return None if found is None else StoredObject(body=found[0], etag=found[1])

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        content_type: str = "application/json",
    ) -> str:
        current = self.objects.get(key)
        if if_none_match and current is not None:
            raise PreconditionFailedError(key)
        if if_match is not None and (current is None or current[1] != if_match):
            raise PreconditionFailedError(key)
        self._version += 1
        etag = f'"{self._version}"'
        self.objects[key] = (body, etag)
        self.puts.append(key)
        return etag

    def open(self, key: str) -> BinaryIO | None:
        self.opened.append(key)
        found = self.objects.get(key)
        return None if found is None else io.BytesIO(found[0])

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        if_none_match: bool = False,
        content_type: str = "application/json",
    ) -> str:
        # Through put(), so a test lake that overrides put() sees streamed writes too.
        self.streamed.append(key)
        return self.put(key, b"".join(chunks), if_none_match=if_none_match, content_type=content_type)

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def list_keys(self, prefix: str) -> Iterator[str]:
        return iter(sorted(k for k in self.objects if k.startswith(prefix)))

    def list_etags(self, prefix: str) -> Iterator[tuple[str, str]]:
        return iter(sorted((k, v[1]) for k, v in self.objects.items() if k.startswith(prefix)))

    def uri(self, key: str) -> str:
        return f"mem://lake/{key}"


def as_port(lake: MemoryLake) -> ObjectStore:
    """mypy fails here if the fake drifts from the port."""
    return lake

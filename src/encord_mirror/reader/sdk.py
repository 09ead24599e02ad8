"""A lake row as the SDK's `LabelRowV2`, offline: the SDK parses the row's `to_encord_dict()` with the
project's ontology, and no request goes to Encord (there is no project client: the row can be read, not
saved)."""

from __future__ import annotations

from typing import Any

from encord_mirror.domain.models import JsonDict


class _Ontology:
    """What `LabelRowV2` reads of an `encord.ontology.Ontology`: its structure."""

    def __init__(self, structure: Any) -> None:
        self.structure = structure


def _frames(labels: JsonDict) -> int:
    """Enough frames for every label the row holds (the lake keeps labels, not the media's length)."""
    count = len(labels.get("data_units") or {})
    for unit in (labels.get("data_units") or {}).values():
        frames = unit.get("labels") or {}
        if "objects" not in frames and "classifications" not in frames:
            count = max(count, *(int(k) + 1 for k in frames), 1) if frames else count
    for answer in (labels.get("classification_answers") or {}).values():
        for _start, end in answer.get("range") or []:
            count = max(count, end + 1)
    return max(count, 1)


def label_row(document: JsonDict, ontology: JsonDict) -> Any:
    from encord.objects.ontology_labels_impl import LabelRowV2
    from encord.objects.ontology_structure import OntologyStructure
    from encord.orm.label_row import LabelRowMetadata

    labels = {k: v for k, v in document.items() if k != "mirror"}
    unit: JsonDict = next(iter(labels.get("data_units", {}).values()), {})
    meta = LabelRowMetadata.from_dict(
        {
            "label_status": "LABELLED",
            "is_shadow_data": False,
            "number_of_frames": _frames(labels),
            "data_link": unit.get("data_link"),
            "width": unit.get("width"),
            "height": unit.get("height"),
            "spaces": {},
            **labels,
        }
    )
    row = LabelRowV2(meta, None, _Ontology(OntologyStructure.from_dict(ontology)))  # type: ignore[arg-type]
    row.from_labels_dict(labels)
    return row

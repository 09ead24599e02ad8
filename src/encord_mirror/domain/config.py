"""The mirror's configuration: checked once, at start, so a bad value fails before any work.

`MirrorConfig(...)` raises `ConfigError` (never pydantic's `ValidationError`), whose message and
`setting` attribute name the offending setting, so the CLI and the Lambda cold start can print it as is.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)

from encord_mirror.domain.limits import DEFAULT_BUNDLE_SIZE, MAX_BUNDLE_SIZE
from encord_mirror.domain.models import MAIN_BRANCH, BranchSelection, RowMeta, Stage
from encord_mirror.domain.rowdoc import ROW_FORMAT_VERSION

# The values `list_label_rows_v2` reports as `annotation_task_status` (AnnotationTaskStatus).
TASK_STATUSES = frozenset({"QUEUED", "ASSIGNED", "IN_REVIEW", "RETURNED", "COMPLETED"})


class ConfigError(Exception):
    """A configuration value is invalid; `setting` names it (e.g. `bundle_size`)."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"invalid configuration: {setting}: {problem}")
        self.setting = setting
        self.problem = problem


class FilterShrinkError(ConfigError):
    """A filter change would take more than `filter_shrink_limit` percent of a project's current view out
    of it (a typo that still names real stages, or a stage and task status that select nothing). Raised
    by the planner before anything is written; the counts are for the log."""

    def __init__(self, project_hash: str, removing: int, lake_rows: int, limit: int) -> None:
        super().__init__(
            "filter_shrink_limit",
            f"the changed filters would take {removing} of the {lake_rows} rows of project {project_hash}'s "
            f"current view out of it ({removing / lake_rows:.0%}), more than the {limit}% a filter change "
            "may remove; check the branch, stage and task-status filters, or allow it",
        )
        self.project_hash = project_hash
        self.removing = removing
        self.lake_rows = lake_rows
        self.limit = limit


class MirrorConfig(BaseModel):
    """What to mirror and how. Immutable; every field is validated at construction.

    Feature filters: `object_feature_hashes` / `classification_feature_hashes` (None = keep all) keep only
    the objects and classifications of those ontology feature hashes in each row's JSON. Objects are
    filtered in every data unit's labels (per frame for videos) together with their `object_answers` and
    `object_actions`; classifications in `classification_answers` and in any per-frame lists. Every other
    key of `to_encord_dict()` is kept as it is.
    Each feature hash must be in the project's ontology (`check_features`, run by the planner).
    Stage filters match a workflow stage by its exact title or uuid (case included); `stage_exclude` wins
    over `stage_include`. Each must name a stage of the project's workflow (`check_stages`) and a named
    branch must exist (`check_branch`), both run by the planner. A filter change may take at most
    `filter_shrink_limit` percent of the lake's current view out of it (`check_shrink`; 100: any).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    projects: tuple[str, ...] = Field(min_length=1)
    branches: BranchSelection = Field(default_factory=BranchSelection)
    bundle_size: int = Field(default=DEFAULT_BUNDLE_SIZE, ge=1, le=MAX_BUNDLE_SIZE)
    overlap_seconds: int = Field(default=120, ge=0, le=86_400)
    reconcile_every: int = Field(default=12, ge=1)
    stage_include: tuple[str, ...] = ()
    stage_exclude: tuple[str, ...] = ()
    task_statuses: tuple[str, ...] = ()
    object_feature_hashes: tuple[str, ...] | None = None
    classification_feature_hashes: tuple[str, ...] | None = None
    max_attempts: int = Field(default=3, ge=1, le=100)
    lease_ttl_seconds: int = Field(default=900, ge=30)
    # The change log keeps every run (None), or the newest N with what was current before them folded
    # into one base (see `domain.history`).
    history_keep_runs: int | None = Field(default=None, ge=1)
    filter_shrink_limit: int = Field(default=50, ge=0, le=100)
    # COCO snapshots: every one is kept (both None), or per partition the newest `snapshots_keep` and
    # every one younger than `snapshots_keep_days`, never the latest (see `domain.retention`).
    snapshots_keep: int | None = Field(default=None, ge=1)
    snapshots_keep_days: int | None = Field(default=None, ge=1)

    @model_validator(mode="wrap")
    @classmethod
    def _name_the_setting(cls, data: Any, handler: ModelWrapValidatorHandler[MirrorConfig]) -> MirrorConfig:
        # ConfigError is not a ValueError, so pydantic lets it through instead of wrapping it again.
        try:
            return handler(data)
        except ValidationError as exc:
            raise _config_error(exc) from None

    @field_validator("projects")
    @classmethod
    def _projects_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not p.strip() for p in value):
            raise ValueError("a project hash is empty")
        if len(set(value)) != len(value):
            raise ValueError("a project is listed twice")
        return value

    @field_validator("branches")
    @classmethod
    def _branch_named(cls, value: BranchSelection) -> BranchSelection:
        if value.mode == "named" and not value.name:
            raise ValueError("mode 'named' needs a branch name")
        if value.mode != "named" and value.name is not None:
            raise ValueError(f"a branch name is only allowed with mode 'named' (got mode {value.mode!r})")
        return value

    def filters_fingerprint(self) -> str:
        """`<selection>.<content>`: digests of what decides which rows are in the lake (branches, stage and
        task-status filters) and of what each row holds (feature filters and the row format version). A
        run planned with another selection than the last completed run reconciles; with another content,
        it also sends every selected row again (see the planner): that is how a lake written with another
        row format is rewritten."""
        selection = {
            "branches": [self.branches.mode, self.branches.name],
            "stage_include": sorted(self.stage_include),
            "stage_exclude": sorted(self.stage_exclude),
            "task_statuses": sorted(self.task_statuses),
        }
        content = {
            "object_feature_hashes": _sorted_or_none(self.object_feature_hashes),
            "classification_feature_hashes": _sorted_or_none(self.classification_feature_hashes),
            "row_format_version": ROW_FORMAT_VERSION,
        }
        return f"{_digest(selection)}.{_digest(content)}"

    def filters_changed(self, synced_with: str | None) -> tuple[bool, bool]:
        """(selection changed, content changed) since the lake was synced with the `synced_with`
        fingerprint. None (a new state, or one from before filters were recorded) is taken as this
        selection, but not as this content: its rows may have been written in an older row format."""
        if synced_with is None:
            return False, True
        old_selection, _, old_content = synced_with.partition(".")
        selection, _, content = self.filters_fingerprint().partition(".")
        return old_selection != selection, old_content != content

    def check_features(self, project_hash: str, ontology: Mapping[str, Any]) -> None:
        """Raise ConfigError (naming the setting) when a feature filter names a feature hash the project's
        ontology (`OntologyStructure.to_dict()`) lacks: a typo would strip those objects from every row."""
        for setting, kind in (
            ("object_feature_hashes", "objects"),
            ("classification_feature_hashes", "classifications"),
        ):
            wanted: tuple[str, ...] | None = getattr(self, setting)
            known = {str(node.get("featureNodeHash")) for node in ontology.get(kind) or ()}
            unknown = sorted(set(wanted or ()) - known)
            if unknown:
                raise ConfigError(
                    setting,
                    f"project {project_hash}'s ontology has no {kind} with feature hash "
                    f"{', '.join(unknown)} (it has: {', '.join(sorted(known)) or 'none'})",
                )

    def check_stages(self, project_hash: str, stages: Sequence[Stage]) -> None:
        """Raise ConfigError (naming the setting) when a stage filter names no stage of the project's
        workflow: a typo or another case would select no row (`stage_include`) or exclude none."""
        known = {s.title for s in stages} | {s.uuid for s in stages}
        listed = ", ".join(f"{s.title!r} ({s.uuid})" for s in stages) or "none, it has no workflow"
        for setting in ("stage_include", "stage_exclude"):
            for value in getattr(self, setting):
                if value not in known:
                    hint = _did_you_mean(value, known)
                    raise ConfigError(
                        setting,
                        f"project {project_hash}'s workflow has no stage {value!r} (a stage is matched by "
                        f"its exact title or uuid, case included){hint}; its stages: {listed}",
                    )

    def check_branch(self, project_hash: str, branches: Collection[str]) -> None:
        """Raise ConfigError when the named branch is not one of the project's label branches (`main`
        always exists): a typo would list every data unit without a label row and empty the lake."""
        name = self.branches.branch_name
        known = {MAIN_BRANCH, *branches}
        if name is not None and name not in known:
            names = ", ".join(sorted(known, key=lambda b: (b != MAIN_BRANCH, b)))
            raise ConfigError(
                "branches",
                f"project {project_hash} has no label branch {name!r}{_did_you_mean(name, known)}; "
                f"its branches: {names}",
            )

    def shrink_refused(self, removing: int, lake_rows: int) -> bool:
        """Whether a filter change that takes `removing` of `lake_rows` rows out of the current view
        removes more than `filter_shrink_limit` percent of it."""
        return removing * 100 > self.filter_shrink_limit * lake_rows

    def check_shrink(self, project_hash: str, removing: int, lake_rows: int) -> None:
        """Raise FilterShrinkError when a filter change removes more of the lake than the limit allows."""
        if self.shrink_refused(removing, lake_rows):
            raise FilterShrinkError(project_hash, removing, lake_rows, self.filter_shrink_limit)

    @field_validator("task_statuses")
    @classmethod
    def _known_statuses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - TASK_STATUSES)
        if unknown:
            raise ValueError(f"unknown task status {unknown}; use {sorted(TASK_STATUSES)}")
        return value

    @field_validator(
        "stage_include", "stage_exclude", "object_feature_hashes", "classification_feature_hashes"
    )
    @classmethod
    def _no_blank(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and any(not v.strip() for v in value):
            raise ValueError("contains an empty value")
        return value

    def selects(self, meta: RowMeta) -> bool:
        """Whether a labelled row passes the stage and task-status filters (and so belongs in the lake)."""
        stage_names = {meta.stage_uuid, meta.stage_title} - {None}
        if self.stage_include and not stage_names.intersection(self.stage_include):
            return False
        if stage_names.intersection(self.stage_exclude):
            return False
        return not self.task_statuses or meta.task_status in self.task_statuses


def _digest(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _did_you_mean(value: str, known: Collection[str]) -> str:
    """A hint for a near miss: the same name in another case, or the closest name."""
    same = sorted(k for k in known if k.casefold() == value.strip().casefold())
    close = same or difflib.get_close_matches(value, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _sorted_or_none(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else sorted(values)


def _config_error(exc: ValidationError) -> ConfigError:
    first = exc.errors()[0]
    loc = first.get("loc", ())
    setting = str(loc[0]) if loc else "configuration"
    problem = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if "input" in first and first.get("type") != "missing":
        problem = f"{problem} (got {first['input']!r})"
    return ConfigError(setting, problem)

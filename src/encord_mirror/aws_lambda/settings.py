"""The Lambda environment, checked once at cold start. Field names equal the variable names in
template.yaml (a test holds them equal), so an error message names the variable to fix."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from encord_mirror.coco.modes import CocoMode
from encord_mirror.domain.config import ConfigError, MirrorConfig
from encord_mirror.domain.models import BranchSelection

# MirrorConfig setting -> the environment variable that carries it.
_CONFIG_VARIABLES = {
    "projects": "PROJECTS",
    "branches": "BRANCH_MODE",
    "bundle_size": "BUNDLE_SIZE",
    "overlap_seconds": "OVERLAP_SECONDS",
    "reconcile_every": "RECONCILE_EVERY",
    "stage_include": "STAGE_INCLUDE",
    "stage_exclude": "STAGE_EXCLUDE",
    "task_statuses": "TASK_STATUSES",
    "object_feature_hashes": "OBJECT_FEATURE_HASHES",
    "classification_feature_hashes": "CLASSIFICATION_FEATURE_HASHES",
    "max_attempts": "MAX_ATTEMPTS",
    "lease_ttl_seconds": "LEASE_TTL_SECONDS",
    "history_keep_runs": "HISTORY_KEEP_RUNS",
    "filter_shrink_limit": "FILTER_SHRINK_LIMIT",
    "snapshots_keep": "SNAPSHOTS_KEEP",
    "snapshots_keep_days": "SNAPSHOTS_KEEP_DAYS",
}


def variable_of(setting: str) -> str:
    """The environment variable that carries a MirrorConfig setting (`branches`: BRANCH_MODE; a named
    branch's name is in BRANCH_NAME)."""
    return _CONFIG_VARIABLES.get(setting, setting)


class SettingsError(Exception):
    """An environment variable is missing or invalid; `variable` names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"invalid Lambda environment: {variable}: {problem}")
        self.variable = variable
        self.problem = problem


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


class Settings(BaseModel):
    """Every variable is required: template.yaml sets them all, and a missing one is a deployment bug.
    List values are comma-separated; an empty feature-hash list means "keep every feature"."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    LAKE_BUCKET: str = Field(min_length=3, max_length=63)
    LAKE_PREFIX: str
    STATE_TABLE: str = Field(min_length=3)
    WORK_QUEUE_URL: str = Field(pattern=r"^https?://")
    FINALIZE_QUEUE_URL: str = Field(pattern=r"^https?://")
    EVENT_BUS_NAME: str = Field(min_length=1)
    ENCORD_KEY_SECRET_ARN: str = Field(pattern=r"^arn:aws[a-z-]*:secretsmanager:")
    ENCORD_DOMAIN: str = Field(pattern=r"^https?://")
    SECRET_MAX_AGE_SECONDS: int = Field(ge=0)
    PROJECTS: str = Field(min_length=1)
    BRANCH_MODE: Literal["main", "named", "all"]
    BRANCH_NAME: str
    BUNDLE_SIZE: int
    OVERLAP_SECONDS: int
    RECONCILE_EVERY: int
    STAGE_INCLUDE: str
    STAGE_EXCLUDE: str
    TASK_STATUSES: str
    OBJECT_FEATURE_HASHES: str
    CLASSIFICATION_FEATURE_HASHES: str
    MAX_ATTEMPTS: int
    LEASE_TTL_SECONDS: int
    HISTORY_KEEP_RUNS: int = Field(ge=0)  # 0: keep every run's change log
    FILTER_SHRINK_LIMIT: int  # percent of the current view a filter change may remove (100: any)
    SNAPSHOTS_KEEP: int = Field(ge=0)  # 0 (and SNAPSHOTS_KEEP_DAYS 0): keep every COCO snapshot
    SNAPSHOTS_KEEP_DAYS: int = Field(ge=0)
    COCO_MODE: CocoMode
    ANNOUNCE_MIN_ANNOTATIONS: int = Field(ge=0)
    POWERTOOLS_SERVICE_NAME: str = Field(min_length=1)
    POWERTOOLS_METRICS_NAMESPACE: str = Field(min_length=1)
    POWERTOOLS_LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"]

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Validate the environment and the mirror configuration it describes, or raise SettingsError."""
        try:
            settings = cls.model_validate(dict(environ))
        except ValidationError as exc:
            first = exc.errors()[0]
            variable = str(first["loc"][0]) if first.get("loc") else "environment"
            problem = str(first.get("msg", "invalid"))
            if first.get("type") != "missing":
                problem = f"{problem} (got {first.get('input')!r})"
            raise SettingsError(variable, problem) from None
        settings.mirror_config()  # a bad configuration fails now, not in the first record
        return settings

    def mirror_config(self) -> MirrorConfig:
        name = self.BRANCH_NAME or None
        try:
            return MirrorConfig(
                projects=_csv(self.PROJECTS),
                branches=BranchSelection(
                    mode=self.BRANCH_MODE, name=name if self.BRANCH_MODE == "named" else None
                ),
                bundle_size=self.BUNDLE_SIZE,
                overlap_seconds=self.OVERLAP_SECONDS,
                reconcile_every=self.RECONCILE_EVERY,
                stage_include=_csv(self.STAGE_INCLUDE),
                stage_exclude=_csv(self.STAGE_EXCLUDE),
                task_statuses=_csv(self.TASK_STATUSES),
                object_feature_hashes=_csv(self.OBJECT_FEATURE_HASHES) or None,
                classification_feature_hashes=_csv(self.CLASSIFICATION_FEATURE_HASHES) or None,
                max_attempts=self.MAX_ATTEMPTS,
                lease_ttl_seconds=self.LEASE_TTL_SECONDS,
                history_keep_runs=self.HISTORY_KEEP_RUNS or None,
                filter_shrink_limit=self.FILTER_SHRINK_LIMIT,
                snapshots_keep=self.SNAPSHOTS_KEEP or None,
                snapshots_keep_days=self.SNAPSHOTS_KEEP_DAYS or None,
            )
        except ConfigError as exc:
            variable = variable_of(exc.setting)
            if exc.setting == "branches" and self.BRANCH_MODE == "named":
                variable = "BRANCH_NAME"
            raise SettingsError(variable, exc.problem) from None


@functools.cache
def load_settings() -> Settings:
    """The process's settings, read once (cold start)."""
    return Settings.from_environ(os.environ)

"""The Lambda environment, checked once at cold start. Field names equal the variable names in
template.yaml (a test holds them equal), so an error message names the variable to fix. MirrorConfig's
settings are read generically: each field is the variable of its name in capitals (`variable_of`)."""

from __future__ import annotations

import functools
import os
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from encord_mirror.coco.modes import CocoMode
from encord_mirror.domain.config import ConfigError, MirrorConfig
from encord_mirror.domain.models import BranchSelection


def variable_of(setting: str) -> str:
    """The environment variable that carries a MirrorConfig setting: its name in capitals (`branches`:
    BRANCH_MODE; a named branch's name is in BRANCH_NAME)."""
    if setting == "branches":
        return "BRANCH_MODE"
    return setting.upper() if setting in MirrorConfig.model_fields else setting


def _kind(annotation: Any) -> str:
    """How a variable carries a MirrorConfig field of this type: `int` a number; `csv` comma-separated
    text for `tuple[str, ...]`; `..._or_none` for `| None`, where 0 (or "") means None."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1
    base = args[0] if optional else annotation
    if base is int:
        kind = "int"
    elif base == tuple[str, ...]:
        kind = "csv"
    else:
        raise TypeError(f"no environment variable carries a MirrorConfig field of type {annotation!r}")
    return f"{kind}_or_none" if optional else kind


# MirrorConfig setting -> how its variable carries it: every field but `branches` (BRANCH_MODE and
# BRANCH_NAME), so a new MirrorConfig field reaches the Lambda with no change here; template.yaml must
# set its variable (tests/infrastructure/test_template.py holds the two equal).
_CONFIG_KINDS = {
    setting: _kind(field.annotation)
    for setting, field in MirrorConfig.model_fields.items()
    if setting != "branches"
}
_VARIABLE_TYPES: dict[str, Any] = {
    "int": int,
    "int_or_none": Annotated[int, Field(ge=0)],
    "csv": str,
    "csv_or_none": str,
}


def _config_value(kind: str, value: int | str) -> object:
    if isinstance(value, str):
        values = _csv(value)
        return values or None if kind == "csv_or_none" else values
    return value or None if kind == "int_or_none" else value


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
    BRANCH_MODE: Literal["main", "named", "all"]
    BRANCH_NAME: str
    COCO_MODE: CocoMode
    ANNOUNCE_MIN_ANNOTATIONS: int = Field(ge=0)
    POWERTOOLS_SERVICE_NAME: str = Field(min_length=1)
    POWERTOOLS_METRICS_NAMESPACE: str = Field(min_length=1)
    POWERTOOLS_LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    # MirrorConfig's settings, one variable per field (PROJECTS, BUNDLE_SIZE, FILTER_SHRINK_LIMIT, ...).
    __annotations__.update({variable_of(s): _VARIABLE_TYPES[kind] for s, kind in _CONFIG_KINDS.items()})

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
        settings: dict[str, object] = {
            setting: _config_value(kind, getattr(self, variable_of(setting)))
            for setting, kind in _CONFIG_KINDS.items()
        }
        settings["branches"] = BranchSelection(
            mode=self.BRANCH_MODE, name=name if self.BRANCH_MODE == "named" else None
        )
        try:
            return MirrorConfig.model_validate(settings)
        except ConfigError as exc:
            variable = variable_of(exc.setting)
            if exc.setting == "branches" and self.BRANCH_MODE == "named":
                variable = "BRANCH_NAME"
            raise SettingsError(variable, exc.problem) from None


@functools.cache
def load_settings() -> Settings:
    """The process's settings, read once (cold start)."""
    return Settings.from_environ(os.environ)

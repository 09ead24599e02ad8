"""The `LabelSource` port on the real `encord` SDK (0.1.211): read-only, bundled, failures per row.

Read-only by construction: a row whose `label_hash` is None is never initialised (the SDK would send a
`labelrow` PUT and *create* it), and nothing here calls `save()`. The private key comes from a file (CLI)
or a string (Lambda: Secrets Manager) and never appears in a message or a log line.
"""

from __future__ import annotations

import email.utils
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import requests
from cryptography.exceptions import UnsupportedAlgorithm
from encord.configs import ENCORD_DOMAIN
from encord.constants.enums import DataType
from encord.exceptions import (
    AuthenticationError,
    AuthorisationError,
    EncordException,
    RequestException,
    ResourceNotFoundError,
    SshKeyNotFound,
)
from encord.http.constants import DEFAULT_REQUESTS_SETTINGS, RequestsSettings
from encord.objects.ontology_labels_impl import LabelRowV2
from encord.orm.label_row import LabelRowMetadata, LabelStatus
from encord.orm.project import ProjectType
from encord.project import Project
from encord.user_client import EncordUserClient

from encord_mirror.domain.models import (
    LoadedRow,
    LoadResult,
    Media,
    ProjectInfo,
    RowMeta,
    RowQuery,
    SourceClock,
    Stage,
)
from encord_mirror.domain.watermark import iso_utc, require_utc

UserClientFactory = Callable[[], EncordUserClient]
_T = TypeVar("_T")
_CLOCK_TIMEOUT_S = 10


class EncordSourceError(Exception):
    """Encord could not be used; `hint` says what to check."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(f"{message} ({hint})" if hint else message)
        self.hint = hint


class EncordCredentialsError(EncordSourceError):
    """The private key could not be read or is not an Ed25519 OpenSSH private key."""

    def __init__(self, key_origin: str, problem: str) -> None:
        super().__init__(
            f"cannot use {key_origin}: {problem}",
            hint="Encord needs the unencrypted Ed25519 OpenSSH private key registered with your Encord user",
        )
        self.key_origin = key_origin


class EncordAuthError(EncordSourceError):
    """Encord refused the key (wrong key, key not registered, or the wrong domain/region)."""

    def __init__(self, key_origin: str, domain: str, detail: str) -> None:
        super().__init__(
            f"Encord at {domain} refused {key_origin}: {detail}",
            hint="check that the key's public half is registered with your Encord user, and that the domain "
            "matches your Encord region (--encord-domain)",
        )
        self.key_origin = key_origin
        self.domain = domain


class EncordProjectAccessError(EncordSourceError):
    """The project does not exist at this domain, or the key's user has no access to it."""

    def __init__(self, project_hash: str, domain: str, detail: str) -> None:
        super().__init__(
            f"project {project_hash} is not available at {domain}: {detail}",
            hint="check the --project hash and that the key's user is a member of the project",
        )
        self.project_hash = project_hash
        self.domain = domain


class EncordApiError(EncordSourceError):
    """A call failed after the SDK's own retries (rate limit, server error, network)."""

    def __init__(self, project_hash: str, operation: str, detail: str) -> None:
        super().__init__(f"Encord {operation} for project {project_hash} failed: {detail}")
        self.project_hash = project_hash
        self.operation = operation
        self.detail = detail


def describe_sdk_error(exc: BaseException) -> str:
    """A short, key-free text for an SDK exception (the SDK's `str()` appends a long request context)."""
    message = exc.message if isinstance(exc, EncordException) else str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _key_problem(exc: BaseException) -> str:
    text = str(exc)
    if "password" in text.lower() or "encrypted" in text.lower():
        return "the key is password-protected; the mirror needs an unencrypted key"
    if "Ed25519" in text or isinstance(exc, UnsupportedAlgorithm):
        return "not an Ed25519 private key (Encord accepts Ed25519 keys only)"
    return "not an OpenSSH private key"


def _utc_or_none(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _enum_text(value: object) -> str | None:
    if value is None:
        return None
    return str(value.value) if isinstance(value, Enum) else str(value)


def _missing_means_gone(bundle_error: str) -> bool:
    """Whether a bundle's error may mean that some of its label rows no longer exist."""
    return bundle_error.startswith(ResourceNotFoundError.__name__)


def _media(row: LabelRowV2) -> Media | None:
    # A row with spaces (data groups, scenes) needs the listing's space layout, which a chunk message
    # does not carry: the worker lists it again.
    if row._space_map:
        return None
    return Media(
        number_of_frames=row.number_of_frames,
        frames_per_second=row.fps,
        duration=row.duration,
        is_shadow_data=row.is_shadow_data,
    )


def _listing_metadata(meta: RowMeta) -> LabelRowMetadata:
    """The SDK's listing item rebuilt from a RowMeta: what `initialise_labels` and `to_encord_dict()` read
    from the listing. The rest (dataset, data link, label status, dimensions) comes from the initialise
    response, which replaces it."""
    media = meta.media
    assert media is not None
    node = {"uuid": meta.stage_uuid, "title": meta.stage_title or ""} if meta.stage_uuid is not None else None
    return LabelRowMetadata.from_dict(
        {
            "label_hash": meta.label_hash,
            "last_edited_at": iso_utc(meta.last_edited_at),
            "branch_name": meta.branch,
            "data_hash": meta.data_hash,
            "dataset_hash": "",
            "dataset_title": "",
            "data_title": meta.data_title,
            "data_type": meta.data_type.upper(),
            "data_link": None,
            "spaces": {},
            "label_status": LabelStatus.NOT_LABELLED.value,
            "annotation_task_status": meta.task_status,
            "workflow_graph_node": node,
            "is_shadow_data": media.is_shadow_data,
            "number_of_frames": media.number_of_frames,
            "frames_per_second": media.frames_per_second,
            "duration": media.duration,
        }
    )


def _row_meta(project_hash: str, row: LabelRowV2) -> RowMeta:
    node = row.workflow_graph_node
    # The public `annotation_task_status` refuses workflow projects although the listing carries the value.
    task_status = row._label_row_read_only_data.annotation_task_status
    return RowMeta(
        project_hash=project_hash,
        data_hash=row.data_hash,
        branch=row.branch_name,
        label_hash=row.label_hash,
        last_edited_at=_utc_or_none(row.last_edited_at),
        stage_uuid=str(node.uuid) if node is not None else None,
        stage_title=node.title if node is not None else None,
        task_status=_enum_text(task_status),
        data_title=row.data_title,
        data_type=_enum_text(row.data_type) or "",
        media=_media(row),
    )


MediaFrame = tuple[str, int]  # (data hash of the image or data unit, frame): a COCO image's Encord keys


@dataclass(frozen=True, slots=True)
class SignedLinks:
    """What `signed_links` found: a fetchable URL per media frame, and the rows it could not sign, why."""

    links: dict[MediaFrame, str]
    failed: dict[str, str]  # label hash -> reason


def _signed_frames(row: LabelRowV2, wanted: Collection[MediaFrame]) -> dict[MediaFrame, str]:
    """The signed URLs of an initialised row's wanted frames: an image's or image-group member's
    `data_link`, a DICOM slice's `metadata.file_uri`, a video frame's video `data_link` (a NIfTI volume's
    slices have no file of their own)."""
    out: dict[MediaFrame, str] = {}
    if row.data_type in (DataType.IMAGE, DataType.IMG_GROUP):
        for view in row.get_frame_views():
            key = (view.image_hash, 0)
            if key in wanted and view.data_link:
                out[key] = view.data_link
    elif row.data_type == DataType.VIDEO:
        for key in wanted:
            if key[0] == row.data_hash and row.data_link:
                out[key] = row.data_link  # the video's: its frames are decoded out of it
    elif row.data_type == DataType.DICOM:
        for data_hash, frame in wanted:
            metadata = row.get_frame_view(frame).metadata if data_hash == row.data_hash else None
            if metadata is not None and metadata.file_uri:
                out[(data_hash, frame)] = metadata.file_uri
    return out


class EncordLabelSource:
    """`LabelSource` over the Encord SDK. Safe to share between worker threads.

    Build it with `from_key_file` (CLI) or `from_private_key` (Lambda), or pass any factory returning an
    `EncordUserClient` (tests). The user client and each project (with its ontology) are fetched once.
    """

    def __init__(
        self,
        user_client_factory: UserClientFactory,
        *,
        domain: str = ENCORD_DOMAIN,
        key_origin: str = "the Encord private key",
    ) -> None:
        self._factory = user_client_factory
        self._domain = domain
        self._key_origin = key_origin
        self._lock = threading.Lock()
        self._client: EncordUserClient | None = None
        self._projects: dict[str, Project] = {}
        self._infos: dict[str, ProjectInfo] = {}

    @classmethod
    def from_private_key(
        cls,
        private_key: str,
        *,
        domain: str | None = None,
        key_origin: str = "the Encord private key",
        requests_settings: RequestsSettings = DEFAULT_REQUESTS_SETTINGS,
    ) -> EncordLabelSource:
        """From the key's text (e.g. a Secrets Manager secret). The key is parsed now, so a bad key fails at
        start; `key_origin` names where it came from in error messages (never the key itself)."""
        resolved = (domain or ENCORD_DOMAIN).rstrip("/")
        if not private_key.strip():
            # An empty key would make the SDK fall back to ENCORD_SSH_KEY from the environment, silently.
            raise EncordCredentialsError(key_origin, "the key is empty")
        try:
            client = EncordUserClient.create_with_ssh_private_key(
                ssh_private_key=private_key, domain=resolved, requests_settings=requests_settings
            )
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # The SDK's own message quotes the key's text: never pass it on.
            raise EncordCredentialsError(key_origin, _key_problem(exc)) from None
        return cls(lambda: client, domain=resolved, key_origin=key_origin)

    @classmethod
    def from_key_file(
        cls,
        path: str | Path,
        *,
        domain: str | None = None,
        requests_settings: RequestsSettings = DEFAULT_REQUESTS_SETTINGS,
    ) -> EncordLabelSource:
        key_path = Path(path).expanduser()
        origin = f"the SSH key file {key_path}"
        try:
            text = key_path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise EncordCredentialsError(origin, "no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise EncordCredentialsError(origin, f"cannot read it ({type(exc).__name__})") from None
        return cls.from_private_key(
            text, domain=domain, key_origin=origin, requests_settings=requests_settings
        )

    @property
    def domain(self) -> str:
        return self._domain

    # -- LabelSource ----------------------------------------------------------------------------------

    def project_info(self, project_hash: str) -> ProjectInfo:
        with self._lock:
            cached = self._infos.get(project_hash)
        if cached is not None:
            return cached
        project = self._project(project_hash)
        stages: tuple[Stage, ...] = ()
        if project.project_type == ProjectType.WORKFLOW:
            stages = tuple(
                Stage(uuid=str(s.uuid), title=s.title, stage_type=_enum_text(s.stage_type) or "")
                for s in project.workflow.stages
            )
        info = ProjectInfo(
            project_hash=project_hash,
            title=project.title,
            ontology_hash=project.ontology_hash,
            ontology=project.ontology_structure.to_dict(),
            stages=stages,
        )
        with self._lock:
            self._infos[project_hash] = info
        return info

    def list_branches(self, project_hash: str) -> tuple[str, ...]:
        project = self._project(project_hash)
        return self._guard(project_hash, "branch listing", lambda: tuple(project.list_branches()))

    def server_time(self) -> SourceClock:
        """Encord's clock, from the `Date` header of a HEAD request to the domain: no key, no body, and an
        origin server with a clock dates every answer, whatever its status (RFC 9110, section 6.6.1). The
        SDK's own answers cannot be read: each request opens and closes its own `requests.Session`."""
        try:
            # requests, as the SDK: the same proxy and CA bundle settings (HTTPS_PROXY, REQUESTS_CA_BUNDLE).
            answer = requests.head(self._domain + "/", timeout=_CLOCK_TIMEOUT_S, allow_redirects=False)
        except requests.RequestException as exc:
            return SourceClock(None, f"HEAD {self._domain}/ failed: {type(exc).__name__}")
        header = answer.headers.get("Date")
        if not header:
            return SourceClock(None, f"{self._domain} answered without a Date header")
        try:
            date = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return SourceClock(None, f"{self._domain} answered with an unreadable Date header {header!r}")
        # An HTTP date is GMT; a naive result means the header said so with "-0000".
        return SourceClock(date.replace(tzinfo=UTC) if date.tzinfo is None else date.astimezone(UTC))

    def list_rows(self, project_hash: str, query: RowQuery) -> list[RowMeta]:
        if query.label_hashes is not None and not query.label_hashes:
            return []
        if query.data_hashes is not None and not query.data_hashes:
            return []
        project = self._project(project_hash)
        rows = self._guard(
            project_hash,
            "label row listing",
            lambda: project.list_label_rows_v2(
                data_hashes=list(query.data_hashes) if query.data_hashes is not None else None,
                label_hashes=list(query.label_hashes) if query.label_hashes is not None else None,
                # A naive datetime would go to Encord without an offset and mean whatever the server
                # takes it to mean.
                edited_after=require_utc(query.edited_after, "edited_after"),
                edited_before=require_utc(query.edited_before, "edited_before"),
                include_all_label_branches=query.branches.all_branches,
                branch_name=query.branches.branch_name,
            ),
        )
        return [_row_meta(project_hash, row) for row in rows]

    def load_rows(self, project_hash: str, label_hashes: Sequence[str], *, bundle_size: int) -> LoadResult:
        wanted = list(dict.fromkeys(label_hashes))
        if not wanted:
            return LoadResult(loaded=(), failed={}, gone=())
        project = self._project(project_hash)
        try:
            # Every branch: a label hash names one row on one branch, whichever branch the run mirrors.
            listed = project.list_label_rows_v2(label_hashes=wanted, include_all_label_branches=True)
        except (AuthenticationError, SshKeyNotFound) as exc:
            raise EncordAuthError(self._key_origin, self._domain, describe_sdk_error(exc)) from None
        except EncordException as exc:
            reason = f"listing the chunk's rows failed: {describe_sdk_error(exc)}"
            return LoadResult(loaded=(), failed=dict.fromkeys(wanted, reason), gone=())

        by_hash = {row.label_hash: row for row in listed if row.label_hash is not None}
        gone = tuple(h for h in wanted if h not in by_hash)
        pairs = [(_row_meta(project_hash, by_hash[h]), by_hash[h]) for h in wanted if h in by_hash]
        loaded, failed, missing, bundle_error = self._initialise(project, pairs, bundle_size)
        for label_hash in missing:
            failed[label_hash] = (
                f"bundle request failed: {bundle_error}"
                if bundle_error
                else "Encord left the row out of the bundle response (uninitialised)"
            )
        return LoadResult(loaded=tuple(loaded), failed=failed, gone=gone)

    def load_listed(self, project_hash: str, rows: Sequence[RowMeta], *, bundle_size: int) -> LoadResult:
        project = self._project(project_hash)
        pairs: list[tuple[RowMeta, LabelRowV2]] = []
        again: list[str] = []
        seen: set[str] = set()
        for meta in rows:
            if meta.label_hash is None or meta.label_hash in seen:
                continue  # never initialise a row without a label hash: that would create it in Encord
            seen.add(meta.label_hash)
            if meta.media is None:
                again.append(meta.label_hash)
            else:
                pairs.append((meta, LabelRowV2(_listing_metadata(meta), project._client, project._ontology)))
        loaded, failed, missing, bundle_error = self._initialise(project, pairs, bundle_size)
        if bundle_error is not None and not _missing_means_gone(bundle_error):
            failed.update(dict.fromkeys(missing, f"bundle request failed: {bundle_error}"))
            missing = []
        # A row deleted (or moved to another project) since it was listed: the bundle left it out or
        # Encord refused the request; a listing by label hash tells gone from a glitch.
        if not missing and not again:
            return LoadResult(loaded=tuple(loaded), failed=failed, gone=())
        rest = self.load_rows(project_hash, [*missing, *again], bundle_size=bundle_size)
        failed.update(rest.failed)
        return LoadResult(loaded=(*loaded, *rest.loaded), failed=failed, gone=rest.gone)

    def _initialise(
        self, project: Project, pairs: list[tuple[RowMeta, LabelRowV2]], bundle_size: int
    ) -> tuple[list[LoadedRow], dict[str, str], list[str], str | None]:
        """Initialise the rows in one bundle: (loaded, failed, label hashes left uninitialised, the error
        the bundle raised if any)."""
        row_errors: dict[str, str] = {}
        bundle_error: str | None = None
        try:
            with project.create_bundle(bundle_size=max(1, bundle_size)) as bundle:
                for _, row in pairs:
                    _initialise_guarded(row, bundle, row_errors)
        except (AuthenticationError, SshKeyNotFound) as exc:
            raise EncordAuthError(self._key_origin, self._domain, describe_sdk_error(exc)) from None
        except EncordException as exc:
            # A request of the bundle failed (429 after retries, 5xx...): rows it carried stay uninitialised.
            bundle_error = describe_sdk_error(exc)

        loaded: list[LoadedRow] = []
        failed: dict[str, str] = {}
        missing: list[str] = []
        for meta, row in pairs:
            label_hash = row.label_hash
            assert label_hash is not None
            if label_hash in row_errors:
                failed[label_hash] = row_errors[label_hash]
            elif not row.is_labelling_initialised:
                missing.append(label_hash)
            else:
                try:
                    labels = row.to_encord_dict()
                except Exception as exc:  # a corrupt row may break anywhere in the SDK's serialiser
                    failed[label_hash] = f"corrupt label row: {describe_sdk_error(exc)}"
                    continue
                # The content may be newer than the listing (edited in between): its own edit time wins.
                edited = _utc_or_none(row.last_edited_at) or meta.last_edited_at
                content = replace(
                    meta, last_edited_at=edited, data_hash=row.data_hash, data_title=row.data_title
                )
                loaded.append(LoadedRow(meta=content, labels=labels))
        return loaded, failed, missing, bundle_error

    def signed_links(
        self, project_hash: str, wanted: Mapping[str, Collection[MediaFrame]], *, bundle_size: int
    ) -> SignedLinks:
        """Signed URLs of the media frames of label rows (label hash -> its wanted frames), through the
        SDK's `initialise_labels(include_signed_url=True)` in one bundle: read-only (a row is never saved,
        and one without a label hash is never asked for). Signed URLs expire: fetch them at once."""
        hashes = list(wanted)
        if not hashes:
            return SignedLinks({}, {})
        project = self._project(project_hash)
        listed = self._guard(
            project_hash,
            "label row listing",
            lambda: project.list_label_rows_v2(label_hashes=hashes, include_all_label_branches=True),
        )
        rows = {row.label_hash: row for row in listed if row.label_hash in wanted}
        errors: dict[str, str] = {}
        bundle_error: str | None = None
        try:
            with project.create_bundle(bundle_size=max(1, bundle_size)) as bundle:
                for row in rows.values():
                    _initialise_guarded(row, bundle, errors, signed=True)
        except (AuthenticationError, SshKeyNotFound) as exc:
            raise EncordAuthError(self._key_origin, self._domain, describe_sdk_error(exc)) from None
        except EncordException as exc:
            bundle_error = describe_sdk_error(exc)
        links: dict[MediaFrame, str] = {}
        failed: dict[str, str] = {}
        for label_hash in hashes:
            signed_row = rows.get(label_hash)
            if signed_row is None:
                failed[label_hash] = "Encord no longer has this label row"
            elif label_hash in errors:
                failed[label_hash] = errors[label_hash]
            elif not signed_row.is_labelling_initialised:
                failed[label_hash] = (
                    f"bundle request failed: {bundle_error}"
                    if bundle_error
                    else "Encord left the row out of the bundle response"
                )
            else:
                links.update(_signed_frames(signed_row, wanted[label_hash]))
        return SignedLinks(links, failed)

    # -- internals -------------------------------------------------------------------------------------

    def _user_client(self) -> EncordUserClient:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def _project(self, project_hash: str) -> Project:
        with self._lock:
            project = self._projects.get(project_hash)
        if project is not None:
            return project
        client = self._user_client()
        try:
            project = client.get_project(project_hash)
        except (AuthenticationError, SshKeyNotFound) as exc:
            raise EncordAuthError(self._key_origin, self._domain, describe_sdk_error(exc)) from None
        except (AuthorisationError, ResourceNotFoundError) as exc:
            raise EncordProjectAccessError(project_hash, self._domain, describe_sdk_error(exc)) from None
        except RequestException as exc:
            detail = f"cannot reach Encord at {self._domain} ({describe_sdk_error(exc)})"
            raise EncordApiError(project_hash, "project lookup", detail) from None
        except EncordException as exc:
            raise EncordApiError(project_hash, "project lookup", describe_sdk_error(exc)) from None
        with self._lock:
            return self._projects.setdefault(project_hash, project)

    def _guard(self, project_hash: str, operation: str, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except (AuthenticationError, SshKeyNotFound) as exc:
            raise EncordAuthError(self._key_origin, self._domain, describe_sdk_error(exc)) from None
        except AuthorisationError as exc:
            raise EncordProjectAccessError(project_hash, self._domain, describe_sdk_error(exc)) from None
        except EncordException as exc:
            raise EncordApiError(project_hash, operation, describe_sdk_error(exc)) from None


def _initialise_guarded(
    row: LabelRowV2, bundle: Any, errors: dict[str, str], *, signed: bool = False
) -> None:
    """Queue `row` in the bundle so that a corrupt response item fails this row alone.

    The bundle parses each response item inside its loop: one item the SDK cannot parse would raise out of
    `execute()` and leave every later row uninitialised. Shadowing `from_labels_dict` on the instance (the
    SDK looks it up when the row is queued) keeps the error with its row.
    """
    label_hash = row.label_hash
    if label_hash is None:
        raise ValueError("refusing to initialise a row without a label_hash: that would create it in Encord")
    parse = row.from_labels_dict

    def guarded(label_row_dict: dict[str, Any], **kwargs: Any) -> None:
        try:
            parse(label_row_dict, **kwargs)
        except Exception as exc:  # any parser failure is this row's failure only
            errors[label_hash] = f"corrupt label row: {describe_sdk_error(exc)}"

    vars(row)["from_labels_dict"] = guarded
    row.initialise_labels(bundle=bundle, include_signed_url=signed)

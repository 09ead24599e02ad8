"""The bundle size's default and ceiling, in a module that imports nothing, so the CLI's help can name
them without loading pydantic (`MirrorConfig` validates `bundle_size` against them)."""

from __future__ import annotations

DEFAULT_BUNDLE_SIZE = 100
# Encord's own ceiling for one bundled label-row request (`LABEL_ROW_BUNDLE_GET_LIMIT`): the SDK does not
# cap a larger bundle, and the server answers MULTI_LABEL_LIMIT_ERROR.
MAX_BUNDLE_SIZE = 1000

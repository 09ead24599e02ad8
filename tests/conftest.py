"""Shared by every test tier. Its presence puts `tests/` on sys.path (pytest's default `prepend` import
mode inserts a root conftest's folder), so tests import the shared fakes as `from fakes import ...`."""

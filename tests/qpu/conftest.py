"""Fixtures shared with the exporter tests: tiny exported models, exported once a session."""

from tests.exporters.conftest import exported  # noqa: F401 - re-exported fixture

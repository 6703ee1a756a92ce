"""Fixtures of the service tests."""

from tests.serve.published import published  # noqa: F401

"""Shared fixtures: the anyio backend and the real-server fixtures."""

import pytest

from tests.support.history import history_prometheus  # noqa: F401  (re-exported as a fixture)
from tests.support.realservers import (  # noqa: F401  (re-exported as fixtures)
    mongo_server,
    prometheus_server,
    redis_server,
)


@pytest.fixture
def anyio_backend():
    """Run async tests on asyncio: pymongo's async client and APScheduler need it."""
    return "asyncio"

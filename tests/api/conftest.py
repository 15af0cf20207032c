"""An in-process server (TestClient) with a source, write key and API keys ready."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from remarket.api import create_app
from remarket.config import Settings
from tests.api.harness import Server


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # These servers run on the wall clock: without quiet hours, or a send made in the
    # evening (21:00-08:00 by default) would wait for the morning and the test fail.
    return Settings(
        data_dir=tmp_path / "var",
        log_fsync="normal",
        worker_poll_interval_s=0.01,
        channels_quiet_hours=None,
    )


@pytest.fixture
def server(settings: Settings) -> Iterator[Server]:
    with TestClient(create_app(settings)) as client:
        yield Server.of(client)

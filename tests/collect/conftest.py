"""Pipelines with the protective stages, closed after each test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.collect.protected import Pipeline, pipeline

MakePipeline = Callable[..., Pipeline]


@pytest.fixture
def make_pipeline(tmp_path: Path) -> Iterator[MakePipeline]:
    """``make_pipeline(state_url=None, **settings)``: a new pipeline under tmp_path."""
    made: list[Pipeline] = []

    def make(state_url: str | None = None, **settings: Any) -> Pipeline:
        p = pipeline(tmp_path / f"p{len(made)}", state_url, **settings)
        made.append(p)
        return p

    yield make
    for p in made:
        asyncio.run(p.log.close())
        p.engine.dispose()

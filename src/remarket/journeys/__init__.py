"""Journeys: versioned definitions, a durable per-profile runtime, funnel and dry run."""

from __future__ import annotations

from remarket.journeys.catalog import CONSUMER, JourneyCatalog, JourneyInfo, JourneyVersion
from remarket.journeys.interpreter import Effect, Plan, Position, advance
from remarket.journeys.runtime import JourneyRuntime
from remarket.journeys.sink import JourneyLoop, JourneysSink

__all__ = [
    "CONSUMER",
    "Effect",
    "JourneyCatalog",
    "JourneyInfo",
    "JourneyLoop",
    "JourneyRuntime",
    "JourneyVersion",
    "JourneysSink",
    "Plan",
    "Position",
    "advance",
]

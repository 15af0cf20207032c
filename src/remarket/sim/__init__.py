"""Synthetic shop traffic and the end-to-end demo (through the public HTTP API only)."""

from __future__ import annotations

from remarket.sim.demo import run_demo
from remarket.sim.shop import Shop, Visitor

__all__ = ["Shop", "Visitor", "run_demo"]

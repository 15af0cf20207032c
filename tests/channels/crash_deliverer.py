"""The deliverer as its own process, for the crash test: ``python -m
tests.channels.crash_deliverer DATA_DIR`` delivers the outbox of DATA_DIR/state.db until
killed."""

from __future__ import annotations

import asyncio
import sys
import threading
from datetime import timedelta
from pathlib import Path

from remarket.channels import Delivery
from remarket.clock import SystemClock
from remarket.config import Settings
from remarket.storage.state import connect_state


def main(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, channels_quiet_hours=None)
    engine = connect_state(settings.resolved_database_url())
    # A short lease: rows the killed process held are taken up again soon after restart.
    delivery = Delivery(
        engine, settings, SystemClock(), lease=timedelta(seconds=10), poll_interval=0.05
    )
    print("ready", flush=True)
    asyncio.run(delivery.run(threading.Event()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

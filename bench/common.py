"""What every results file records: machine, card, date and the command that wrote it."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path


def stamp(card: str | None = None) -> dict:
    cpus = os.cpu_count()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"machine": f"{platform.node()}: {cpus} CPUs, {platform.machine()}, {ram:.0f} GiB", "card": card,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv])}

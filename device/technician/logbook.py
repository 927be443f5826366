"""The kiosk's own log files (``<data_dir>/logs/bedside.log``, rotated, for the technician's logs
download and the diagnostics archive; the journal keeps its copy too) and the recent warnings and
errors the status page lists."""

from __future__ import annotations

import logging
import logging.handlers
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from device.machine.clock import utc_iso

LOG_FILE = "bedside.log"
MAX_BYTES = 5 * 2**20
BACKUPS = 3
RECENT = 50
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class LoggedProblem:
    at: str
    level: str
    logger: str
    message: str


class _Recent(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[LoggedProblem] = deque(maxlen=RECENT)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        with self._guard:
            self.records.append(LoggedProblem(utc_iso(record.created), record.levelname, record.name, message[:500]))


class Logbook:
    """Attached to the root logger while the kiosk runs; ``close`` detaches it."""

    def __init__(self, data_dir: Path):
        self.dir = data_dir / "logs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._file = logging.handlers.RotatingFileHandler(
            self.dir / LOG_FILE, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
        )
        self._file.setFormatter(logging.Formatter(FORMAT))
        self._file.setLevel(logging.INFO)
        self._recent = _Recent()
        root = logging.getLogger()
        root.addHandler(self._file)
        root.addHandler(self._recent)
        self._level = root.level
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)

    def files(self) -> list[Path]:
        """The log files, oldest first."""
        self._file.flush()
        rotated = sorted(self.dir.glob(LOG_FILE + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
        current = self.dir / LOG_FILE
        return [*rotated, *([current] if current.is_file() else [])]

    def recent_problems(self) -> list[LoggedProblem]:
        with self._recent._guard:
            return list(reversed(self._recent.records))

    def close(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self._file)
        root.removeHandler(self._recent)
        root.setLevel(self._level)
        self._file.close()

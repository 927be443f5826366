"""Two slots per exam and one link that says which is live, so a power cut never leaves neither.

    <root>/<exam>                 -> .slots/<exam>/a   (a symlink: the bundle the kiosk serves)
    <root>/.slots/<exam>/a/, b/      the two slots, each a complete bundle folder or being staged
    <root>/.slots/<exam>/state.json  which slot is committed (known good), which is being tried
    <root>/.slots/<exam>/lock        held (flock) by the one process changing this exam

The link is only ever replaced by rename(2) of a new link over it, then the folder is fsynced, so
at every instant it names a complete slot (or is absent: the shipped bundle serves). A slot is
staged only while it is not live and is complete and fsynced before the link can point at it.
``state.json`` is written atomically before and after each switch; ``recover`` puts the link back on
the committed slot when a switch was not committed (the installer died during the health check).

``<root>`` is an ordinary bundles folder for ``models.bundle.find_bundles``: the links are its entries,
``.slots`` has no manifest and is skipped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from pydantic import ValidationError

from device.updates.errors import Busy, UpdateError
from models import atomic
from models.bundle import BundleError, _Strict, describe_validation_error, find_bundles, read_manifest

log = logging.getLogger("bedside.updates")

Slot = Literal["a", "b"]
SLOTS: tuple[Slot, Slot] = ("a", "b")
SLOTS_DIR = ".slots"


class SlotRecord(_Strict):
    """A slot that holds a complete, verified, self-tested bundle."""

    version: str
    key_id: str
    allow_downgrade: bool = False
    installed_at: str
    archive: str


class ExamState(_Strict):
    committed: Slot | None = None
    trying: Slot | None = None
    slots: dict[Slot, SlotRecord] = {}

    def other(self, slot: Slot | None) -> Slot:
        return "b" if slot == "a" else "a"


class Slots:
    def __init__(self, root: Path):
        self.root = Path(root)

    def exam_dir(self, exam: str) -> Path:
        return self.root / SLOTS_DIR / exam

    def slot_dir(self, exam: str, slot: Slot) -> Path:
        return self.exam_dir(exam) / slot

    def link(self, exam: str) -> Path:
        return self.root / exam

    def exams(self) -> list[str]:
        base = self.root / SLOTS_DIR
        return sorted(p.name for p in base.iterdir() if (p / "state.json").is_file()) if base.is_dir() else []

    # ---- state ------------------------------------------------------------------------------

    def read_state(self, exam: str) -> ExamState:
        path = self.exam_dir(exam) / "state.json"
        try:
            return ExamState.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return ExamState()
        except OSError as exc:
            raise UpdateError(f"{path}: cannot read: {exc.strerror}") from None
        except ValidationError as exc:
            raise UpdateError(f"{path}: not a valid slot state ({describe_validation_error(exc)}); "
                              "reinstall the exam's bundle") from None

    def write_state(self, exam: str, state: ExamState) -> None:
        text = json.dumps(state.model_dump(mode="json"), indent=2) + "\n"
        atomic.write_bytes(self.exam_dir(exam) / "state.json", text.encode("utf-8"))

    # ---- the link ---------------------------------------------------------------------------

    def active_slot(self, exam: str) -> Slot | None:
        try:
            target = os.readlink(self.link(exam))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UpdateError(f"{self.link(exam)}: not a slot link ({exc.strerror}); remove it") from None
        name = Path(target).name
        if Path(target).parent != Path(SLOTS_DIR, exam) or name not in SLOTS:
            raise UpdateError(f"{self.link(exam)} points at {target}, not at one of its slots; remove it")
        return name  # type: ignore[return-value]

    def switch(self, exam: str, slot: Slot | None) -> None:
        """Point the exam's link at ``slot`` (None: remove it) in one rename, made durable."""
        link = self.link(exam)
        if slot is None:
            link.unlink(missing_ok=True)
        else:
            tmp = self.exam_dir(exam) / "link.tmp"
            tmp.unlink(missing_ok=True)
            os.symlink(Path(SLOTS_DIR, exam, slot), tmp)
            os.replace(tmp, link)
            atomic.fsync_directory(self.exam_dir(exam))
        atomic.fsync_directory(self.root)

    def clear_slot(self, exam: str, slot: Slot) -> Path:
        path = self.slot_dir(exam, slot)
        if path.exists():
            shutil.rmtree(path)
            atomic.fsync_directory(path.parent)
        return path

    # ---- one writer at a time ---------------------------------------------------------------

    @contextmanager
    def locked(self, exam: str) -> Iterator[None]:
        """Exclusive for this exam, or Busy at once. The kernel drops the lock when its process dies
        (SIGKILL, power loss), so a crashed install never blocks the next one."""
        directory = self.exam_dir(exam)
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(f"another install, activation or rollback of {exam} is running; try again when it ends") from None
            yield
        finally:
            os.close(fd)

    def recover_locked(self, exam: str) -> str | None:
        """With the lock held: finish what an interrupted switch left (see the module docstring).
        Returns what was done, or None when there was nothing to do."""
        state = self.read_state(exam)
        active = self.active_slot(exam)
        done = None
        if active != state.committed:
            self.switch(exam, state.committed)
            done = (f"{exam}: an update was not committed; back on slot {state.committed}" if state.committed
                    else f"{exam}: a first install was not committed; the shipped bundle serves again")
        if state.trying is not None or done:
            self.write_state(exam, state.model_copy(update={"trying": None}))
        if done:
            log.warning("%s", done)
        return done

    def recover(self) -> list[str]:
        """Recover every exam not being changed right now (the kiosk calls this at start)."""
        done = []
        for exam in self.exams():
            try:
                with self.locked(exam):
                    note = self.recover_locked(exam)
            except Busy:
                continue
            except UpdateError as exc:  # the kiosk still starts; it serves what the link names
                log.error("%s: cannot recover: %s", exam, exc)
                note = f"{exam}: cannot recover: {exc}"
            if note:
                done.append(note)
        return done


def served_bundles(root: Path, shipped_dir: Path) -> list[Path]:
    """The bundle folders the kiosk serves: each installed exam's live slot (resolved, so a later switch
    does not move files under a loaded exam), then each shipped bundle whose exam is not installed."""
    installed = [p.resolve() for p in find_bundles(root)] if root.is_dir() else []
    ids = {p.name for p in find_bundles(root)} if root.is_dir() else set()
    shipped = []
    for path in find_bundles(shipped_dir):
        try:
            exam = read_manifest(path).id
        except BundleError:
            exam = None  # loading it will say what is wrong with it
        if exam not in ids:
            shipped.append(path)
    return installed + shipped

"""What an update can fail with. Every message is one plain line that names the reason and, where
there is one, what to do. Where a command fixes it (signing an archive, installing an application
release), the command is kept apart: the CLI prints it (``str()``), the technician page, where no
command can be run, shows the message alone."""

from __future__ import annotations


class UpdateError(Exception):
    """An update, activation or rollback that did not happen; the previous state is kept.
    ``message``: for people at the device; ``command``: what fixes it from a shell, if anything."""

    def __init__(self, message: str, command: str | None = None):
        super().__init__(message if command is None else f"{message} ({command})")
        self.message = message
        self.command = command


class Refused(UpdateError):
    """An archive refused before anything was written: signature, key, hashes, contents, size,
    appliance version or downgrade."""


class SelfTestFailed(UpdateError):
    """The staged bundle did not reproduce its golden outputs here; it was removed again."""


class HealthCheckFailed(UpdateError):
    """The live kiosk did not serve the new bundle correctly; the previous one is active again."""


class NotInstalled(UpdateError):
    """No installed bundle (or no earlier one to roll back to) for the exam named."""


class Busy(UpdateError):
    """Another install, activation or rollback of the same exam is running."""


class KeyProblem(UpdateError):
    """A key file that cannot be made, read or used."""

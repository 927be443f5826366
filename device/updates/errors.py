"""What an update can fail with. Every message is one plain line that names the reason and, where
there is one, what to do; the CLI prints it as it is and the technician page shows it."""

from __future__ import annotations


class UpdateError(Exception):
    """An update, activation or rollback that did not happen; the previous state is kept."""


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

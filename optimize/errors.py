"""Failures of the optimization stage, each with a message that says what to do."""


class OptimizeError(Exception):
    """The optimizer refused or could not produce a variant."""

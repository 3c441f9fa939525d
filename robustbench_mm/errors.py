"""Typed errors. Every user mistake is an ``MMRobustError``: the CLI prints its one line, exit code 2."""


class MMRobustError(Exception):
    """Base class for errors caused by user input; the message names the fix."""


class ConfigError(MMRobustError):
    """A preset or CLI value is malformed or out of range."""


class UnknownNameError(MMRobustError):
    """A registry lookup failed; the message lists close matches."""


class CapabilityError(MMRobustError):
    """A model cannot do what a task or defense needs (e.g. captioning with CLIP)."""


class StoreError(MMRobustError):
    """The result store is unreadable, foreign or locked."""


class WeightsError(MMRobustError):
    """Model weights are missing or refused (pickle, remote code)."""


class ValidityError(RuntimeError):
    """An adversarial batch left the threat model. This is a bug, never a user error."""

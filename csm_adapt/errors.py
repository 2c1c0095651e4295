"""Errors a user can cause; each message names the file, line or key at fault."""


class CsmAdaptError(Exception):
    """Base class: the CLI prints these without a traceback."""


class CheckpointError(CsmAdaptError):
    pass


class ConfigError(CsmAdaptError):
    pass


class AudioError(CsmAdaptError):
    """`reason` is a short, stable code ("missing", "corrupt", "empty audio", "bad span", ...) that
    the prepare step counts its rejects by; the message says the details."""

    def __init__(self, message: str, reason: str = "corrupt"):
        super().__init__(message)
        self.reason = reason


class GenerationError(CsmAdaptError):
    pass


class PluginError(CsmAdaptError):
    pass


class SampleError(CsmAdaptError):
    """A `Sample` or `Turn` built with a wrong value; the reader it came from is added by `ReaderRef.read`."""

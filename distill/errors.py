"""User-facing errors: the CLI prints ``str(err)`` on one line and exits with code 2."""


class DistillError(Exception):
    """Base class for errors caused by bad input (files, configs, arguments), not by bugs."""


class ConfigError(DistillError):
    """A config key, value or override is wrong; the message names the key."""


class DataError(DistillError):
    """A corpus, tokenizer or recording is missing or malformed; the message names the file."""


class CheckpointError(DistillError):
    """A checkpoint or export directory is missing, incomplete or does not match."""

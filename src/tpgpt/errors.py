"""Errors for bad user input: one line that names the value and what would be valid."""


class ConfigError(ValueError):
    """A bad config value, flag, plan or file. The CLI prints it as one line and exits 2."""

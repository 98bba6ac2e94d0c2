"""Exceptions shared across the package."""


class ConfigError(ValueError):
    """The configuration is unusable; the message says what to set."""

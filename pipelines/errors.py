"""Exceptions shared across the package, and the integer-setting check that raises one naming its key."""

from __future__ import annotations

import numbers


class ConfigError(ValueError):
    """The configuration is unusable; the message says what to set."""


def require_int(key: str, value: object, minimum: int = 1, maximum: int | None = None, optional: bool = False):
    """``value`` (the setting ``key``) as an ``int`` in ``[minimum, maximum]``, or ``None`` when it is null and
    ``optional``. For settings no dataclass types (the search and evaluation jobs' own keys); raises
    :class:`ConfigError` naming the key and the accepted range (a bool, float or string is refused, not rounded)."""
    if value is None and optional:
        return None
    integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not integer or value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        msg = f"{key} must be an integer {bounds}{' (or null)' if optional else ''}, got {value!r}"
        raise ConfigError(msg)
    return int(value)

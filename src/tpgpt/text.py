"""Small helpers for the text the commands print."""
from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """'1 forward sync', '8 forward syncs'; `plural` where it is not noun + 's'."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def signed(value: float, digits: int = 4) -> str:
    """A difference with its sign, '+0.0123' or '-0.0040'; one that rounds to zero is '0.0000'
    (no '-0.0000')."""
    text = f"{value:+.{digits}f}"
    return text[1:] if float(text) == 0 else text

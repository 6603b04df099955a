"""User-facing errors: one line that names the bad value and the fix."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class EpochgraphError(Exception):
    """An error caused by the user's input or environment, reported as one line without a traceback."""


def report_errors(func: F) -> F:
    """Turn an `EpochgraphError` raised inside ``func`` into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except EpochgraphError as err:
            print(f"epochgraph: error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def choice_error(what: str, value: object, choices: object, key: str | None = None) -> EpochgraphError:
    """Error for a value outside a known set: names the value and lists the valid ones."""
    valid = ", ".join(sorted(str(c) for c in choices))  # type: ignore[union-attr]
    hint = f" (set {key}=<one of them>)" if key else ""
    return EpochgraphError(f"unknown {what} {value!r}; valid choices: {valid}{hint}")

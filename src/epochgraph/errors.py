"""User-facing errors: one line that names the bad value and the fix; interrupts end with one line too."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

F = TypeVar("F", bound=Callable)

# exit statuses shells expect from a command stopped by a signal: 128 + the signal number
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


class EpochgraphError(Exception):
    """An error caused by the user's input or environment, reported as one line without a traceback."""


class Terminated(BaseException):
    """SIGTERM turned into an exception, so that open runs and trials are closed on the way out.

    A BaseException, like KeyboardInterrupt, so that no job runner (Hydra catches Exception per job)
    swallows it. Its message, when set, says what was closed (``str(err)``).
    """


class JobKilled(Exception):
    """A sweep job that ended without an outcome: killed by its scheduler (``scancel``, a lost node, a time
    or memory limit). The sweeper fails its trial and re-queues it, as for a worker that died."""


_PENDING: list[type[BaseException]] = []  # the interrupt received inside the outermost block, until it ends
_DEPTH = [0]


def _raising(cls: type[BaseException]) -> Callable:
    def handler(signum, frame):
        if not _PENDING:
            _PENDING.append(cls)
        raise cls()

    return handler


@contextlib.contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """Raise `Terminated` on SIGTERM inside the block, and KeyboardInterrupt on Ctrl-C as Python does (main thread
    only; elsewhere signals are left alone; an ignored SIGINT stays ignored).

    Python raises a signal's exception wherever the main thread is, also inside a finalizer or a weakref callback
    (a library's garbage collection), where the exception is dropped (and printed, traceback and all, as
    "Exception ignored"): the interrupt is remembered until the outermost block ends, `check_interrupt` raises it
    again at the training loop's next batch, so that a Ctrl-C or SIGTERM is never lost, and the dropped one is not
    printed (other unraisable exceptions still are).
    """
    try:
        previous = signal.signal(signal.SIGTERM, _raising(Terminated))
    except ValueError:  # not the main thread (joblib workers)
        yield
        return
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raising(KeyboardInterrupt))
    _DEPTH[0] += 1
    hook = sys.unraisablehook
    sys.unraisablehook = _quiet_interrupts(hook)
    try:
        yield
    finally:
        _DEPTH[0] -= 1
        sys.unraisablehook = hook
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)
        if _DEPTH[0] == 0:
            _PENDING.clear()


def _quiet_interrupts(hook: Callable) -> Callable:
    """``sys.unraisablehook`` that drops, unprinted, an interrupt `check_interrupt` will raise again."""

    def quiet(unraisable) -> None:
        if _PENDING and unraisable.exc_type is not None and issubclass(unraisable.exc_type, (Terminated,
                                                                                            KeyboardInterrupt)):
            return
        hook(unraisable)

    return quiet


def check_interrupt() -> None:
    """Raise again the interrupt received inside a `sigterm_as_exception` block, if any (see there): called where a
    long computation can stop cleanly (each batch of the training loop, each trial of a sweep)."""
    if _PENDING:
        raise _PENDING[0]()


def note_interrupt(err: BaseException, note: str) -> None:
    """Set what an interrupt left behind (``"MLflow run ... closed as KILLED"``), printed on the way out."""
    err.args = (note,)


def report_errors(func: F) -> F:
    """Run ``func`` as a command: an `EpochgraphError` becomes one line on stderr and exit status 2; Ctrl-C
    and SIGTERM become one line and exit status 130 / 143, as shells expect, instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_as_exception():
                return func(*args, **kwargs)
        except EpochgraphError as err:
            print(f"epochgraph: error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as err:
            print(f"epochgraph: interrupted (Ctrl-C){_note(err)}", file=sys.stderr)
            sys.exit(EXIT_SIGINT)
        except Terminated as err:
            print(f"epochgraph: terminated (SIGTERM){_note(err)}", file=sys.stderr)
            sys.exit(EXIT_SIGTERM)

    return wrapper  # type: ignore[return-value]


def _note(err: BaseException) -> str:
    return f"; {err.args[0]}" if err.args and err.args[0] else ""


def choice_error(what: str, value: object, choices: object, key: str | None = None) -> EpochgraphError:
    """Error for a value outside a known set: names the value and lists the valid ones."""
    valid = ", ".join(sorted(str(c) for c in choices))  # type: ignore[union-attr]
    hint = f" (set {key}=<one of them>)" if key else ""
    return EpochgraphError(f"unknown {what} {value!r}; valid choices: {valid}{hint}")

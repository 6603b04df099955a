"""Run one of the package's Hydra commands in the test's own process.

``run("epochgraph.cli.train", [...])`` is ``python -m epochgraph.cli.train ...`` without a new interpreter: the same
entry point (`hydra.main`), the same config, the same output and exit status, but torch, MLflow, Hydra and
scikit-learn are not imported again (seconds per command). Tests about what only a process shows (signals,
kills, several workers, the exit status a shell sees, a user's module on ``PYTHONPATH``) keep real subprocesses.

What a command changes in the process is put back afterwards: Hydra's global state, the logging handlers and
levels Hydra's job logging sets, signal handlers, torch's thread count, the working directory and ``sys.argv``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


@contextlib.contextmanager
def _restored_logging():
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    saved = {lg: (lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers}
    try:
        yield
    finally:
        for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            if not isinstance(lg, logging.Logger):
                continue
            level, handlers, propagate, disabled = saved.get(lg, (logging.NOTSET, [], True, False))
            for h in lg.handlers:
                if h not in handlers:
                    h.close()
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled


def run(module: str, args: Sequence[str], cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """``python -m module *args`` in this process: its stdout, stderr and exit status (a `CompletedProcess`)."""
    import torch
    from hydra.core.global_hydra import GlobalHydra

    command = importlib.import_module(module)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads, argv, here = torch.get_num_threads(), sys.argv, os.getcwd()
    GlobalHydra.instance().clear()
    try:
        with _restored_logging(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            sys.argv = [str(Path(command.__file__)), *args]
            if cwd is not None:
                os.chdir(cwd)
            try:
                command.main()
            except SystemExit as exit_:  # as the interpreter ends: None is 0, an int is itself, else printed and 1
                code = 0 if exit_.code is None else exit_.code
                if not isinstance(code, int):
                    print(code, file=sys.stderr)
                    code = 1
    finally:
        sys.argv = argv
        os.chdir(here)
        GlobalHydra.instance().clear()
        torch.set_num_threads(threads)
        for s, h in handlers.items():
            signal.signal(s, h)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())

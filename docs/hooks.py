"""MkDocs hook: the benchmark's results live in ``bench/results/``, outside ``docs/``.

Its markdown is included into the pages under ``docs/results/`` (pymdownx.snippets, ``--8<--``); this hook
adds its pictures (and the tables they sit beside) to the built site under ``results/``, the same relative
paths as in ``bench/results/``, so the links inside the included markdown resolve and ``--strict`` checks
them. Nothing is copied into ``docs/``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
SERVED = {".png", ".svg", ".csv", ".json"}


def on_files(files: Files, config) -> Files:
    for path in sorted(RESULTS.rglob("*")):
        if path.is_file() and path.suffix in SERVED and "quick" not in path.relative_to(RESULTS).parts:
            uri = f"results/{path.relative_to(RESULTS).as_posix()}"
            if files.get_file_from_path(uri) is None:
                files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files

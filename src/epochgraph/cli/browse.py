"""Ways into the results: links to the MLflow UI's runs tables and sweep runs (``make ui``) and
optuna-dashboard on the sweeps' study storage (``make dashboard``).

    python -m epochgraph.cli.browse links --ui http://127.0.0.1:5000
    python -m epochgraph.cli.browse dashboard --port 8080      # storage: EPOCHGRAPH_STORAGE_URL or SQLite
    python -m epochgraph.cli.browse dashboard --mlflow-ui http://gpu-box:5000   # where the notes' links go
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from epochgraph.errors import EpochgraphError, report_errors

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"  # conf/storage/sqlite.yaml


def storage_url(explicit: str | None = None) -> str:
    """The study storage the sweeps use: ``explicit``, else ``EPOCHGRAPH_STORAGE_URL`` (storage=postgres),
    else the embedded SQLite file."""
    from epochgraph.store.storage import resolve_url

    return resolve_url(explicit or os.environ.get("EPOCHGRAPH_STORAGE_URL") or DEFAULT_STORAGE)


SWEEP_FILTER = "tags.`epochgraph.role` = 'sweep'"  # the tag the epochgraph sweeper gives its parent run


def experiment_links(tracking_uri: str | None, base: str) -> list[str]:
    """One line per experiment of the store: its name and the link to its runs table, followed by one line
    per sweep in it (oldest first): the link to the sweep's run, whose page lists its trials."""
    from epochgraph.store import tracking

    client = tracking.get_client(tracking_uri)
    lines = []
    for exp in sorted(client.search_experiments(), key=lambda e: e.name):
        if exp.name == "Default" and not client.search_runs([exp.experiment_id], max_results=1):
            continue
        lines.append(f"  {exp.name}: {tracking.runs_url(client.tracking_uri, exp.experiment_id, base)}")
        for run in client.search_runs([exp.experiment_id], SWEEP_FILTER, order_by=["attributes.start_time ASC"]):
            url = tracking.run_url(client.tracking_uri, exp.experiment_id, run.info.run_id, base)
            lines.append(f"    Sweep run: {url} (study {run.data.tags.get('study') or run.info.run_name})")
    return lines


MLFLOW_PREFIX = "/mlflow/"  # the trials' notes link /mlflow/experiments/E/runs/R: forwarded to the MLflow UI


def mlflow_ui_address(environ: dict, mlflow_ui: str | None) -> str:
    """Where the dashboard forwards a trial's MLflow link: ``mlflow_ui`` (``--mlflow-ui``), else
    ``EPOCHGRAPH_UI_URL``, else the MLflow UI's default port (5000) on the host the browser reached the dashboard
    at (the same machine, as ``make ui`` and ``make dashboard`` run)."""
    if mlflow_ui or os.environ.get("EPOCHGRAPH_UI_URL"):
        return (mlflow_ui or os.environ["EPOCHGRAPH_UI_URL"]).rstrip("/")
    host = (environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or "127.0.0.1").rsplit(":", 1)[0]
    return f"http://{host}:5000"


def forward_mlflow_links(app, mlflow_ui: str | None = None):
    """The dashboard's WSGI ``app``, with ``/mlflow/<page>`` answered by a redirect to that page of the MLflow UI
    (`mlflow_ui_address`): the links in the trials' notes follow the UI wherever it runs."""
    from epochgraph.store.tracking import UI_QUERY

    def forwarding(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith(MLFLOW_PREFIX):
            return app(environ, start_response)
        target = f"{mlflow_ui_address(environ, mlflow_ui)}/#/{path[len(MLFLOW_PREFIX):]}{UI_QUERY}"
        start_response("302 Found", [("Location", target), ("Content-Type", "text/plain; charset=utf-8")])
        return [f"MLflow UI: {target}\n".encode()]

    return forwarding


def serve_dashboard(url: str, host: str, port: int, mlflow_ui: str | None = None) -> None:
    """optuna-dashboard on the study storage ``url`` (blocks until stopped); the MLflow links of the trials' notes
    are forwarded to the MLflow UI at ``mlflow_ui`` (`forward_mlflow_links`).

    The server answers in threads of its own (one per request, as optuna-dashboard's own command serves)
    while the main thread only waits, so Ctrl-C and SIGTERM stop it within a second, also in the middle
    of a request: a signal never lands inside the server's code, where wsgiref's request handler would
    catch its exception and serve on.
    """
    import signal
    import socketserver
    import threading
    from wsgiref.simple_server import WSGIServer, make_server

    from optuna_dashboard import wsgi

    from epochgraph.store.storage import make_storage, redact

    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise EpochgraphError(f"no study storage at {url[len('sqlite:///'):]} yet; run a sweep first (make run), "
                              f"or point EPOCHGRAPH_STORAGE_URL at the shared one")
    storage = make_storage({"url": url})

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True  # a request in progress does not keep a stopped dashboard alive

    try:
        server = make_server(host, port, forward_mlflow_links(wsgi(storage), mlflow_ui), server_class=Server)
    except OSError as err:
        raise EpochgraphError(f"cannot serve optuna-dashboard on {host}:{port} ({err.strerror or err}); "
                              f"pick another port with --port (make dashboard DASHBOARD_PORT=...)") from None
    thread = threading.Thread(target=server.serve_forever, name="optuna-dashboard", daemon=True)
    # the server's threads (and the request threads they start) block Ctrl-C and SIGTERM, so the kernel
    # delivers both to the main thread, whose wait they interrupt
    stop = {signal.SIGINT, signal.SIGTERM}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    print(f"optuna-dashboard on http://{host}:{port}/dashboard (storage: {redact(url)}); Ctrl-C stops it",
          flush=True)
    ui = mlflow_ui or os.environ.get("EPOCHGRAPH_UI_URL") or "port 5000 of the host the dashboard is opened at"
    print(f"the trials' notes link their MLflow runs through {MLFLOW_PREFIX}, forwarded to the MLflow UI at {ui} "
          "(--mlflow-ui)", flush=True)
    try:
        while thread.is_alive():
            thread.join(0.5)  # the signal's exception (Terminated, KeyboardInterrupt) is raised here
    finally:
        server.shutdown()
        server.server_close()


@report_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m epochgraph.cli.browse", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    links = sub.add_parser("links", help="print the MLflow UI link to each experiment's runs and sweeps")
    links.add_argument("--ui", default="http://127.0.0.1:5000", help="the MLflow UI's address")
    links.add_argument("--tracking-uri", default=None, help="the MLflow store (default: MLFLOW_TRACKING_URI or "
                                                            "sqlite:///mlruns/mlflow.db)")
    dash = sub.add_parser("dashboard", help="serve optuna-dashboard on the study storage")
    dash.add_argument("--storage", default=None, help="an Optuna RDB URL (default: EPOCHGRAPH_STORAGE_URL or "
                                                      f"{DEFAULT_STORAGE})")
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=int, default=8080)
    dash.add_argument("--mlflow-ui", default=None, help="the MLflow UI the trials' notes link to (default: "
                                                        "EPOCHGRAPH_UI_URL, else port 5000 of the dashboard's host)")
    args = parser.parse_args(argv)
    if args.command == "links":
        lines = experiment_links(args.tracking_uri, args.ui)
        if lines:
            print("Runs of each experiment (these links open the runs table, not the GenAI overview), "
                  "and each sweep's run (its trials):")
            print("\n".join(lines))
    else:
        serve_dashboard(storage_url(args.storage), args.host, args.port, args.mlflow_ui)


if __name__ == "__main__":
    main()

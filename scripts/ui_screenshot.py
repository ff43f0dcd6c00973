"""Screenshots of the Prefect UI after a `pretrain` deployment run (``make ui-screenshot``).

Starts a Prefect server with its UI (``prefect server start``, a temporary SQLite
database), creates the work pools, registers deployments/prefect.yaml, starts a
process worker, runs the `pretrain` deployment on the local recipe through the REST
API (what the UI's Run button does), waits for Completed, then has headless Chromium
take three screenshots: the run's page, the Artifacts page, and the run's report
artifact. Everything it started is stopped at the end.

    python scripts/ui_screenshot.py [--output docs/ui-run.png] [--run-dir runs/ui-demo]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prefect_rest import (  # noqa: E402
    PREFECT, REPO, PrefectREST, PrefectRunError, deploy_all, ensure_work_pools, prefect_env, run_seconds,
    start_worker, stop_worker,
)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
WINDOW = (1440, 1000)


def find_chromium() -> str | None:
    """$CHROMIUM, else the first Chromium on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def screenshot(url: str, png: Path, chromium: str, wait_ms: int = 20_000) -> Path:
    """Load ``url`` in headless Chromium, let its scripts run for ``wait_ms``, save a PNG."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        argv = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                f"--virtual-time-budget={wait_ms}", f"--screenshot={png}", url]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    if done.returncode != 0 or not png.is_file():
        raise PrefectRunError(f"chromium failed ({done.returncode}) on {url}: {done.stderr[-2000:]}")
    return png


def rendered_text(url: str, chromium: str, wait_ms: int = 20_000) -> str:
    """The page's DOM after its scripts ran (``--dump-dom``), to check what a screenshot shows."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        argv = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", f"--virtual-time-budget={wait_ms}", "--dump-dom", url]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise PrefectRunError(f"chromium --dump-dom failed ({done.returncode}) on {url}: {done.stderr[-2000:]}")
    return done.stdout


def distinct_colours(png: Path) -> int:
    """How many colours the image has: a blank or error page has a handful, a rendered UI hundreds."""
    from PIL import Image

    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours) if colours else 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Path, port: int, log_path: Path, database_url: str | None = None,
                 services: bool = True) -> subprocess.Popen:
    """``prefect server start`` with the UI on 127.0.0.1:port (SQLite under ``home`` unless a database is given)."""
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "true",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}
    env.pop("PREFECT_API_URL", None)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    argv = [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    log = open(log_path, "w")
    return subprocess.Popen(argv + ([] if services else ["--no-services"]), env=env, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(server: subprocess.Popen) -> None:
    stop_worker(server)  # same: SIGINT to its process group, then SIGKILL after a grace period


def take_run_screenshots(base_url: str, flow_run_id: str, rest: PrefectREST, output: Path, chromium: str) -> list[Path]:
    """The run's page at ``output``; next to it the Artifacts page (``-artifacts``) and the run's
    report artifact (``-report``). (The run page opens on its Logs tab whatever the URL says.)"""
    shots = [screenshot(f"{base_url}/runs/flow-run/{flow_run_id}", output, chromium),
             screenshot(f"{base_url}/artifacts", output.with_name(f"{output.stem}-artifacts{output.suffix}"),
                        chromium)]
    report = [a for a in rest.artifacts(flow_run_id) if a["key"] == "pretrain-report"]
    if report:
        shots.append(screenshot(f"{base_url}/artifacts/artifact/{report[0]['id']}",
                                output.with_name(f"{output.stem}-report{output.suffix}"), chromium))
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "ui-run.png")
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "ui-demo",
                        help="output_dir of the pipeline run (under the repository: the data root)")
    parser.add_argument("--port", type=int, default=None, help="UI/API port (default: a free one)")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        sys.exit("no chromium on PATH: run bash scripts/install_chromium.sh (or set CHROMIUM)")
    port = args.port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    args.run_dir.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="prefect-ui-"))
    server = start_server(home, port, args.run_dir / "server.log")
    worker = None
    try:
        rest = PrefectREST(f"{base_url}/api")
        rest.wait_healthy(timeout=240)
        env = prefect_env(f"{base_url}/api", PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="INFO")
        ensure_work_pools(env)
        deploy_all(env)
        worker = start_worker(env, "cpu", log_path=args.run_dir / "worker.log")
        deployment = rest.deployment("pretrain", "pretrain")
        config = {**deployment["parameters"]["config"], "output_dir": str(args.run_dir.resolve())}
        created = rest.create_flow_run(deployment["id"], {"config": config}, name="ui-screenshot")
        print(f"flow run {base_url}/runs/flow-run/{created['id']}")
        run = rest.wait_for(created["id"], timeout=1200, worker=worker)
        if run["state_type"] != "COMPLETED":
            raise PrefectRunError(f"run ended {run['state_name']}:\n" + "\n".join(rest.logs(run["id"])[-30:]))
        print(f"completed in {run_seconds(run):.1f} s")
        for png in take_run_screenshots(base_url, run["id"], rest, args.output, chromium):
            print(f"screenshot {png} ({png.stat().st_size} bytes, {distinct_colours(png)} colours)")
    finally:
        if worker is not None:
            stop_worker(worker)
        stop_server(server)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Run the edge: ``python -m edge`` (reads EDGE_CONFIG and the environment)."""

import argparse
import functools
import logging
import os
import shutil
import sys
from pathlib import Path

from edge.config import MASTER_PID_ENV, ConfigError, load_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge", description="Run the Tollgate edge.")
    parser.add_argument("--config", help="path of the edge YAML file (default: $EDGE_CONFIG)")
    parser.add_argument("--workers", type=int, help="worker processes (default: config, else one per core)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--host")
    args = parser.parse_args(argv)
    if args.config:
        os.environ["EDGE_CONFIG"] = str(Path(args.config).resolve())
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"edge: configuration error: {exc}", file=sys.stderr)
        return 2
    workers = args.workers or config.workers
    # Every worker writes its metrics here; /metrics on any worker reports them all.
    metrics_dir = Path(config.spool_dir) / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"), format="%(message)s")
    if workers > 1:
        # Workers stop when this process is gone (edge/app.py); they read its pid from here, as
        # one may start only after it died.
        os.environ[MASTER_PID_ENV] = str(os.getpid())
    else:
        os.environ.pop(MASTER_PID_ENV, None)

    import uvicorn

    from edge.http import EdgeHttpProtocol

    uvicorn.run(
        "edge.app:create_app",
        factory=True,
        host=args.host or config.host,
        port=args.port or config.port,
        workers=workers,
        loop="uvloop",
        http=functools.partial(EdgeHttpProtocol, limits=config.http),
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=30,
        # The edge reads X-Forwarded-For itself, only when configured to trust it.
        proxy_headers=False,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

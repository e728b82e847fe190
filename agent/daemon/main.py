"""The service's entry points: ``casefile-agent`` (the systemd unit's) and ``casefile agent run``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from agent.daemon.options import DaemonOptions
from agent.daemon.service import AgentService
from agent.state import AgentHome

__all__ = ["run", "run_cli"]

log = logging.getLogger("casefile.agent.daemon")


def run_cli() -> None:
    """``casefile-agent [--home DIR]``: the service entry point, without the CLI's typer and rich.

    The systemd unit starts this one: it keeps the resident process small.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="casefile-agent", description="Casefile agent service (live snapshots).")
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="agent state folder (default: $CASEFILE_HOME, else /var/lib/casefile for root, "
        "~/.local/share/casefile otherwise)",
    )
    run(parser.parse_args().home)


def run(home: Path | None = None, options: DaemonOptions | None = None) -> None:
    """``casefile agent run``: serve until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=os.environ.get("CASEFILE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def main() -> None:
        service = AgentService(AgentHome(home), options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        log.info("agent %s serving (home %s)", service.enrollment.agent_id, service.home.root)
        await service.run()
        log.info("agent stopped")

    asyncio.run(main())

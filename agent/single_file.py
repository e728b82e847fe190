"""Entry point of the single-file build (``make dist``): one executable, two programs.

``casefile …`` is the customer's command line; the agent service runs as
``casefile agent-service [--home DIR]``, or under the name ``casefile-agent`` (a
symlink to the file), so the systemd unit works with either install; ``casefile agent
run`` runs the same service. The service starts its collection child as
``<this file> agent-worker`` (agent.daemon.worker.WORKER_COMMAND), where an installed
agent runs ``python -m agent.daemon.execute``; ``casefile agent-recorder --home DIR`` is
``python -m agent.daemon.recorder`` (the flight recorder without the service). The build
stamp (version, commit, date, build machine's glibc) is written into the bundle by
packaging/build_dist.py and shown by ``--version``.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

__all__ = ["main"]

SERVICE_SUBCOMMAND = "agent-service"
WORKER_SUBCOMMAND = "agent-worker"  # agent.daemon.worker.WORKER_COMMAND, when frozen
RECORDER_SUBCOMMAND = "agent-recorder"  # python -m agent.daemon.recorder, for a file with no -m


def main() -> None:
    # A frozen program started as a multiprocessing child must run the child, not the CLI.
    multiprocessing.freeze_support()
    if sys.argv[1:] == [WORKER_SUBCOMMAND]:
        from agent.daemon.execute import main as worker_main

        worker_main()
        return
    if sys.argv[1:2] == [RECORDER_SUBCOMMAND]:
        from agent.daemon.recorder import main as recorder_main

        recorder_main(sys.argv[2:])
        return
    name = os.path.basename(sys.argv[0])
    if name.startswith("casefile-agent") or sys.argv[1:2] == [SERVICE_SUBCOMMAND]:
        if sys.argv[1:2] == [SERVICE_SUBCOMMAND]:
            sys.argv = ["casefile-agent", *sys.argv[2:]]
        from agent.daemon.main import run_cli

        run_cli()
        return
    from agent.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()

"""Entry point of the single-file build (``make dist``): one executable, two programs.

``casefile …`` is the customer's command line; the agent service runs as
``casefile agent-service [--home DIR]``, or under the name ``casefile-agent`` (a
symlink to the file), so the systemd unit works with either install. The build
stamp (version, commit, date, build machine's glibc) is written into the bundle by
packaging/build_dist.py and shown by ``--version``.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

__all__ = ["main"]

SERVICE_SUBCOMMAND = "agent-service"


def main() -> None:
    # A frozen program started as a multiprocessing child must run the child, not the CLI.
    multiprocessing.freeze_support()
    name = os.path.basename(sys.argv[0])
    if name.startswith("casefile-agent") or sys.argv[1:2] == [SERVICE_SUBCOMMAND]:
        if sys.argv[1:2] == [SERVICE_SUBCOMMAND]:
            sys.argv = ["casefile-agent", *sys.argv[2:]]
        from agent.daemon.service import run_cli

        run_cli()
        return
    from agent.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()

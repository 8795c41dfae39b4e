"""The flags every script takes, whatever its task: how the process reports errors and
joins the others of a distributed run."""

from __future__ import annotations

import argparse

from bas.engine import JOIN_TIMEOUT_S


def add_process_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--debug, --dist-timeout, and the legacy launcher's --local-rank (each also spelt with
    underscores, as the original's WSSS scripts spell their flags)."""
    parser.add_argument("--debug", action="store_true", help="show the traceback of an expected error too")
    parser.add_argument(
        "--dist-timeout",
        "--dist_timeout",
        dest="dist_timeout",
        type=float,
        default=JOIN_TIMEOUT_S,
        metavar="SECONDS",
        help="under several processes: how long each waits for the others to start before it stops, naming the "
        "missing ranks",
    )
    # The legacy launcher (python -m torch.distributed.launch) passes the local rank as a flag.
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, help=argparse.SUPPRESS)

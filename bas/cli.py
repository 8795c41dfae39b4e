"""The flags every script takes, whatever its task: how the process reports errors, joins
the others of a distributed run, and which device and precision it computes on."""

from __future__ import annotations

import argparse

from bas.distributed import JOIN_TIMEOUT_S


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


def add_speed_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Device and speed options; their defaults (fp32, contiguous) reproduce the paper."""
    group = parser.add_argument_group("device and speed")
    group.add_argument("--device", help="default: cuda when present, else cpu (under torchrun: the local rank's GPU)")
    group.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision (default: fp32, exact reproduction)")
    group.add_argument("--channels-last", action="store_true", help="NHWC memory layout (faster convolutions on GPUs)")
    return group

"""An IRN trained here (train_irn's weights file) written in the layout of IRN's own
``res50_irn.pth``, so that IRN-based code loads it (``EdgeDisplacement``, or
``AffinityDisplacementLoss`` to train on from it):

    python -m WSSS.export_irn sess/res50_irn.pth res50_irn_irn_layout.pth

Every key of IRN's file, its training pairs included (those of the crop and radius the net
was trained with); this project's load_irn reads the result back.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bas.checkpoints import save_atomic
from bas.errors import ArgumentError, OutputError, run_main
from WSSS.irn import load_irn, to_irn_layout


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m WSSS.export_irn")
    parser.add_argument("weights", type=Path, help="an IRN of this project (ResNet50), as train_irn writes it")
    parser.add_argument("output", type=Path, help="the file to write, in IRN's layout (must not exist)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    if args.output.exists():
        raise OutputError(f"{args.output} exists: choose another file, or remove it first")
    model, info = load_irn(args.weights)
    if model.arch != "resnet50":
        raise ArgumentError(f"{args.weights}: a {model.arch} IRN; IRN's layout holds a ResNet50 one")
    save_atomic(to_irn_layout(model, info["crop_size"], info["radius"]), args.output)
    print(f"{args.output}: {args.weights} in IRN's layout (crop {info['crop_size']}, radius {info['radius']})")
    return args.output


if __name__ == "__main__":
    run_main(main)

"""train.py with the ILSVRC defaults (--root ILSVRC; the global batch is split over the
processes). The original's multi-GPU command keeps working:

    torchrun --nproc_per_node 4 train_ILSVRC.py --data-dir /data/ILSVRC --metadata /data/metadata/ILSVRC \\
        --arch resnet --pretrained imagenet
    python -m torch.distributed.launch --nproc_per_node 4 train_ILSVRC.py ...   # the legacy launcher
"""

import sys

from bas.errors import run_main
from WSOL.train import main

if __name__ == "__main__":
    if not any(arg == "--root" or arg.startswith("--root=") for arg in sys.argv[1:]):
        sys.argv[1:1] = ["--root", "ILSVRC"]
    run_main(main)

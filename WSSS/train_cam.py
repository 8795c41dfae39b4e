"""Train IRN's CAM net, whose class activation maps the BAS seeds are fused with:
train_bas.py --method cam, with IRN's settings (step/train_cam.py) as defaults.

    python train_cam.py                                                   # the synthetic demo
    python train_cam.py --dataset voc --voc12_root VOCdevkit/VOC2012      # sess/res50_cam.pth
    torchrun --nproc_per_node 4 train_cam.py --dataset voc --voc12_root ...

Every flag of train_bas.py applies (python train_bas.py --help).
"""

import sys

from bas.errors import run_main
from WSSS.train_bas import main

if __name__ == "__main__":
    if not any(arg == "--method" or arg.startswith("--method=") for arg in sys.argv[1:]):
        sys.argv[1:1] = ["--method", "cam"]
    run_main(main)

"""Train the multi-label BAS net (or, with --method cam or train_cam.py, IRN's CAM net) for
weakly supervised semantic segmentation: image labels in, a net whose maps are the seeds.

    python train_bas.py                                   # the synthetic demo: tiny net, a minute or two on a CPU
    torchrun --nproc_per_node 4 train_bas.py --dataset voc --voc12_root VOCdevkit/VOC2012
    python -m torch.distributed.launch --nproc_per_node 4 train_bas.py ...   # the legacy launcher
    python train_cam.py --dataset voc --voc12_root VOCdevkit/VOC2012          # IRN's CAM net, IRN's settings
    python train_bas.py --dataset coco --coco_root COCO2014                   # 80 classes, train2014

On real data every default reproduces what the original code ran (BAS: its
WSSS/train_bas.py; the CAM net: IRN's step/train_cam.py): ResNet50 from ImageNet weights;
BAS with lr 0.005, batch 16 (global, split over the processes), 10 epochs, images squashed
to 512 x 512, flipped, cropped to 448, loss weights alpha 0.2 / beta 1.2, SyncBatchNorm
under several processes; the CAM net with lr 0.1, batch 16, 5 epochs, long side random in
320..640, flipped, cropped to 512. (The demo's defaults, and why, are in PRESETS of
WSSS/training.py, which holds the training.) Both use the original's poly optimizer, whose
quirks are kept, each behind a flag:

- SGD gets the weight decay in its momentum slot: momentum 1e-4 (--momentum 0.9 for the
  DeepLab-style momentum the schedule was made for); the weight decay 1e-4 itself is
  applied, set per parameter group;
- the schedule's length is computed from the per-process batch of a 4-GPU run (16 / 4),
  so it spans 4x the steps taken and the BAS lr only falls to about 0.77 of its start
  (--poly-steps-factor 1 for a schedule that ends with the run; the CAM net's is 1, as IRN
  ran on one process);
- the BAS net's optimizer gets only parameters named "weight": BatchNorm biases never
  train (--train-biases gives them to it; the CAM net's optimizer has them, as IRN's).
  Weights of ``classifier*`` layers get 10x the lr.

Outputs, in --output-dir (default sess/, the original's, for VOC): <method>_last.pth
(rewritten atomically after every epoch; --resume continues from it and gives the same
result as an uninterrupted run), <method>_log.jsonl (one JSON line per epoch with the
loss parts) and <method>_log.png (its curves, redrawn after every epoch; --tensorboard also
logs them to tensorboard/<method>/), and after the last epoch the weights under the original's name
(epoch_<epochs>.pth.tar for BAS, res50_cam.pth for the CAM net), in this project's format:
{'model', 'epoch', 'method', 'arch', 'num_classes', 'classes', 'dataset'}, read by
run_sample.py (--bas_weights_name, --cam_weights_name) and WSSS.models.load_checkpoint.
The original's flag spellings work too (--voc12_root, --train_list, --batch_size, --wt_dec).
"""

from __future__ import annotations

import logging

from bas.errors import run_main
from WSSS.training import get_args_parser, train


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(get_args_parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    run_main(main)

"""PASCAL VOC 2012 and MS COCO 2014 for multi-label training, seed making and mask evaluation.

Layouts read (never hard-coded paths; ``root`` is always an argument):

- VOC: ``VOC2012/`` (or the ``VOCdevkit/`` above it) with ``JPEGImages/<id>.jpg``,
  ``Annotations/<id>.xml``, ``SegmentationClass/<id>.png`` (palette PNGs: value = class index
  + 1, 0 background, 255 void), SBD's ``SegmentationClassAug/<id>.png`` (same values, palette
  or grayscale) for ``train_aug``, and lists ``ImageSets/Segmentation/<split>.txt``. A split is
  a list name (``train``, ``val``, ``trainval``, ``test``, ``train_aug``; looked up in
  ``ImageSets/Segmentation`` then ``ImageSets/SegmentationAug``) or a path to a list file (the
  original's ``voc12/train_aug.txt``). An optional ``classes.txt`` beside ``JPEGImages`` names
  the classes in index order (the synthetic set has one); without it, the 20 VOC classes.
- COCO 2014: ``train2014/``, ``val2014/``, ``annotations/instances_{train,val}2014.json``.

Image labels (multi-hot, float32) come from the annotations, never from the original's
``cls_labels.npy``:

- VOC: every ``<object>`` of the XML counts, ``difficult`` and ``truncated`` ones included.
  That is what the original's ``make_cls_labels.py`` did to write ``cls_labels.npy`` (it takes
  every ``<name>`` of a known class), so our labels are that file's. The original's
  ``*_cls.txt`` lists are another source: they agree with ``cls_labels.npy`` on the VOC
  ``train`` and ``val`` ids but one each, and leave out classes on 816 SBD-only ``train_aug``
  ids (they look like the classes present in the masks, not in the XMLs).
- COCO: class index = rank of the category id (ids sorted ascending: person 0 .. toothbrush 79,
  the original's order); every annotation of an image counts, crowd ones included.

Masks are H x W uint8 index arrays: 0 background, c + 1 for class c, 255 ignored. COCO masks
are drawn from the instances file through pycocotools: instances are painted in the file's
order (a later one covers an earlier one where they overlap, as COCO's own semantic
converters do); crowd regions (``iscrowd`` 1, a group of objects COCO does not outline one by
one) are 255 by default where no single instance covers them, since their outlines are too
rough to score against; ``crowd="class"`` paints them with their class instead.

Every list and annotation is checked when the sample list is built, so bad input stops at once
with ``path:line: problem`` (a JSON entry is named by its id); only an image that fails to
decode, or a mask with values out of range, is found when it is read. An id names a file, never
a folder: every stage names its outputs ``<folder>/<id>.<ext>``, which thus stay in ``<folder>``.
"""

from WSSS.datasets.coco import CocoInstances
from WSSS.datasets.pipeline import PipelineData, pipeline_data
from WSSS.datasets.samples import IGNORE, MaskSet, Sample, read_id_list
from WSSS.datasets.sets import SCALES, ClassificationSet, LabelledSet, MultiScaleItem, MultiScaleSet, TopLeftSet
from WSSS.datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LabelledCrop,
    TrainTransform,
    bas_train_transform,
    cam_train_transform,
    rescale,
    to_tensor,
)
from WSSS.datasets.voc import (
    VOC_CLASSES,
    read_mask,
    voc_classes,
    voc_images,
    voc_label,
    voc_masks,
    voc_objects,
    voc_palette,
    voc_samples,
)

__all__ = [
    "CocoInstances",
    "PipelineData",
    "pipeline_data",
    "IGNORE",
    "MaskSet",
    "Sample",
    "read_id_list",
    "SCALES",
    "ClassificationSet",
    "LabelledSet",
    "MultiScaleItem",
    "MultiScaleSet",
    "TopLeftSet",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LabelledCrop",
    "TrainTransform",
    "bas_train_transform",
    "cam_train_transform",
    "rescale",
    "to_tensor",
    "VOC_CLASSES",
    "read_mask",
    "voc_classes",
    "voc_images",
    "voc_label",
    "voc_masks",
    "voc_objects",
    "voc_palette",
    "voc_samples",
]

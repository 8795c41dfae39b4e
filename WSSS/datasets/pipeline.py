"""The pipeline's data: VOC or COCO, chosen by the flags, behind the calls every stage makes."""

from __future__ import annotations

import functools
from pathlib import Path

from WSSS.datasets.coco import CocoInstances
from WSSS.datasets.samples import MaskSet, Sample, read_id_list
from WSSS.datasets.voc import voc_classes, voc_images, voc_masks, voc_samples

COCO_SPLITS = ("train", "val")


class PipelineData:
    """What the pipeline's stages read, from a VOC2012 folder (lists: names under ImageSets or
    list files) or a COCO 2014 root (lists: a split, train or val, meaning all its annotated
    images, or a file of image names of one split, COCO_train2014_... or COCO_val2014_...)."""

    def __init__(self, voc12_root: str | Path | None = None, coco_root: str | Path | None = None):
        self.voc12_root, self.coco_root = voc12_root, coco_root
        self._instances: dict[str, CocoInstances] = {}

    def _coco(self, split: str) -> CocoInstances:
        if split not in self._instances:  # an instances file is read once: train2014's takes a while
            self._instances[split] = CocoInstances(self.coco_root, split)
        return self._instances[split]

    def _coco_list(self, name: str | Path) -> tuple[CocoInstances, Path | None]:
        if str(name) in COCO_SPLITS:
            return self._coco(str(name)), None
        names = [image_name for _, image_name in read_id_list(name)]
        return self._coco("val" if names and "val2014" in names[0] else "train"), Path(name)

    @property
    def classes(self) -> tuple[str, ...]:
        if self.coco_root is None:
            return voc_classes(self.voc12_root)
        return (next(iter(self._instances.values()), None) or self._coco("val")).classes

    def samples(self, name: str | Path) -> list[Sample]:
        """The images of a list with their labels."""
        if self.coco_root is None:
            return voc_samples(self.voc12_root, name)
        instances, list_file = self._coco_list(name)
        return instances.samples(list_file)

    def images(self, name: str | Path) -> list[Sample]:
        """The images of a list, for prediction: on VOC without reading annotations (its test
        set has none)."""
        return self.samples(name) if self.coco_root is not None else voc_images(self.voc12_root, name)

    def masks(self, name: str | Path) -> MaskSet:
        if self.coco_root is None:
            return voc_masks(self.voc12_root, name)
        instances, list_file = self._coco_list(name)
        return instances.masks(list_file)


def pipeline_data(args) -> PipelineData:
    """The data of a run_sample.py run (``args.voc12_root`` or ``args.coco_root``), one per
    process and roots, so that a COCO instances file is read once for all stages."""
    return _pipeline_data(str(args.voc12_root), str(getattr(args, "coco_root", None) or ""))


@functools.cache
def _pipeline_data(voc12_root: str, coco_root: str) -> PipelineData:
    return PipelineData(voc12_root, coco_root or None)

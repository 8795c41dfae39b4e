"""Seeded randomness, so that a resumed run repeats an uninterrupted one: seeds per epoch
and per key, each epoch's shuffle shared out between processes, each sample's augmentation
seeded by its own seed; and the DataLoader settings every script uses."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed per epoch: shuffling and augmentation of epoch e do not depend on what ran
    before it, so a run resumed at epoch e repeats the uninterrupted run exactly."""
    return seed * 10_000 + epoch


def keyed_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from ``keys`` alone (e.g. seed, epoch, rank, step): what is
    drawn from it does not depend on what ran before, so a resumed run draws the same."""
    high, low = np.random.SeedSequence([int(key) for key in keys]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(high) << 32 | int(low))


def loader_options(workers: int, device: torch.device) -> dict:
    """DataLoader settings every script uses: worker processes kept alive across epochs,
    pinned memory for a CUDA device."""
    return {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}


class ShuffledShards(torch.utils.data.Sampler):
    """This process's share of each epoch's shuffle, as (index, seed) pairs for
    ``SeededItems``.

    The order and each sample's augmentation depend on (seed, epoch, index) only: a
    resumed run repeats an uninterrupted one, and loader workers can live across epochs
    (``persistent_workers``) with any number of them giving the same batches. Call
    ``set_epoch`` before each epoch.
    """

    def __init__(self, size: int, rank: int = 0, world: int = 1, seed: int = 0) -> None:
        self.order = torch.utils.data.DistributedSampler(range(size), world, rank, shuffle=True, seed=seed)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order.set_epoch(epoch)

    def __iter__(self):
        first = epoch_seed(self.seed, self.epoch) * 10**8  # distinct per sample for datasets under 10^8 images
        return ((index, first + index) for index in self.order)

    def __len__(self) -> int:
        return len(self.order)


class SeededItems(torch.utils.data.Dataset):
    """``dataset[index]`` with torch's random generator seeded by the seed that comes with
    the index (from ``ShuffledShards``), so random transforms do not depend on which
    worker runs them or on what it ran before. The caller's generator state is kept."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]

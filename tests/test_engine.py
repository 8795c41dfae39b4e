"""Training plumbing: the learning-rate schedule, shuffling and seeded augmentation."""

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from bas.errors import UserError
from bas.logs import JsonLines
from bas.optim import param_groups, set_step_lr, sgd
from bas.sampling import SeededItems, ShuffledShards
from bas.training import PolySchedule, TrainingRun


class RandomDraws(Dataset):
    """Item i: (a random draw from torch's generator, i), as a random transform would make."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return torch.rand(3), index


def epochs(loader, sampler, count=2):
    out = []
    for epoch in range(count):
        sampler.set_epoch(epoch)
        out.append([(draws, indices) for draws, indices in loader])
    return out


def test_every_index_once_per_epoch_over_the_shards():
    shards = [ShuffledShards(10, rank, 2, seed=3) for rank in range(2)]
    indices = sorted(index for shard in shards for index, _ in shard)
    assert indices == list(range(10))
    seeds = {index: seed for shard in shards for index, seed in shard}
    assert len(set(seeds.values())) == 10  # one seed per sample


def test_order_and_seeds_change_with_the_epoch_only():
    sampler = ShuffledShards(10, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for i, _ in first] != [i for i, _ in second]
    assert not {s for _, s in first} & {s for _, s in second}
    sampler.set_epoch(0)
    assert list(sampler) == first == list(ShuffledShards(10, seed=3))


def test_seeded_item_ignores_and_keeps_the_callers_generator():
    items = SeededItems(RandomDraws())
    torch.manual_seed(0)
    first = items[(4, 123)][0]
    state = torch.get_rng_state()
    torch.manual_seed(99)
    again = items[(4, 123)][0]
    assert torch.equal(first, again)
    assert not torch.equal(first, items[(4, 124)][0])
    torch.manual_seed(0)
    assert torch.equal(torch.get_rng_state(), state)


def test_persistent_workers_give_the_batches_of_no_workers():
    sampler = ShuffledShards(10, seed=5)
    plain = DataLoader(SeededItems(RandomDraws()), batch_size=4, sampler=sampler)
    expected = epochs(plain, sampler)
    workers = DataLoader(
        SeededItems(RandomDraws()), batch_size=4, sampler=sampler, num_workers=2, persistent_workers=True
    )
    for got, want in zip(epochs(workers, sampler), expected):
        for (draws, indices), (want_draws, want_indices) in zip(got, want, strict=True):
            assert torch.equal(indices, want_indices) and torch.equal(draws, want_draws)


def test_learning_rate_groups_and_steps():
    model = torch.nn.Sequential()
    model.add_module("features", torch.nn.Conv2d(1, 2, 1))
    model.add_module("classifier", torch.nn.Conv2d(2, 3, 1))
    groups = {g["lr_multiplier"]: g["params"] for g in param_groups(model, 0.1)}
    assert groups[1][0] is model.features.weight and groups[2][0] is model.features.bias
    assert groups[10][0] is model.classifier.weight and groups[20][0] is model.classifier.bias
    optimizer = sgd(model, 0.1)
    assert set_step_lr(optimizer, 0.1, epoch=5, decay_epoch=3) == pytest.approx(0.01)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.02, 0.1, 0.2])


def test_the_poly_schedule_counts_the_steps_over_the_epochs():
    """Epoch 1's step 2 of 3-step epochs is the run's step 5: lr x (1 - 5 / 10) ** 1, each
    group at its multiple; past max_step the rate stays at step max_step - 1's."""
    weights = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.SGD(
        [{"params": [weights[0]], "lr_multiplier": 1}, {"params": [weights[1]], "lr_multiplier": 10}], lr=1.0
    )
    schedule = PolySchedule(optimizer, base_lr=1.0, max_step=10, power=1.0, steps_per_epoch=3)
    assert schedule.before_step(1)(2) == 0.5 and schedule.lr == 0.5
    assert [group["lr"] for group in optimizer.param_groups] == [0.5, 5.0]
    schedule.before_step(0)(0)
    assert schedule.lr == 1.0
    schedule.before_step(3)(2)  # the run's step 11
    assert schedule.lr == pytest.approx(0.1) and optimizer.param_groups[1]["lr"] == pytest.approx(1.0)
    before_epoch_two = schedule.before_step(2)  # its rates do not depend on when it was made
    schedule.before_step(0)(1)
    assert before_epoch_two(1) == pytest.approx(1 - 7 / 10)


def test_log_lines_survive_a_crash_while_writing(tmp_path, monkeypatch):
    log = JsonLines(tmp_path / "log.jsonl")
    log.write({"epoch": 1, "loss": np.float32(0.5)})
    log.write({"epoch": 2, "loss": torch.tensor(0.25)})
    before = log.path.read_bytes()
    assert log.records() == [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]

    def crash(*_):
        raise KeyboardInterrupt  # interrupted between writing the new file and putting it in place

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        log.write({"epoch": 3, "loss": 0.125})
    assert log.path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


def test_a_broken_log_line_is_named(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "lo\n')
    with pytest.raises(UserError, match=r"log\.jsonl, line 2: not a JSON line"):
        JsonLines(path).records()


@pytest.mark.parametrize("crashing", ["checkpoint", "log line"])
def test_a_crash_while_saving_an_epoch_loses_no_log_line(tmp_path, monkeypatch, crashing):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    run = TrainingRun(tmp_path, "test-run", 1, 0, "cpu", progress=False)
    run.save(model, optimizer, scaler, 1, {"epoch": 1, "lr": 0.1, "train": {"loss": 1.0}})

    def crash(*_):
        raise KeyboardInterrupt  # interrupted while epoch 2 is saved

    if crashing == "checkpoint":
        monkeypatch.setattr(torch, "save", crash)
    else:
        monkeypatch.setattr(JsonLines, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        run.save(model, optimizer, scaler, 2, {"epoch": 2, "lr": 0.1, "train": {"loss": 0.5}})
    monkeypatch.undo()
    run.close()

    resumed = TrainingRun(tmp_path, "test-run", 1, 0, "cpu", progress=False, resume=True)
    done = resumed.resume(model, optimizer, scaler)["epoch"]
    resumed.claim()
    assert [record["epoch"] for record in resumed.history.records()] == list(range(1, done + 1))
    resumed.close()


def test_resume_checks_the_settings_the_checkpoint_records(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    run = TrainingRun(tmp_path, "test-run", 1, 0, "cpu", progress=False)
    run.save(model, optimizer, scaler, 1, {"epoch": 1, "lr": 0.1, "train": {"loss": 1.0}}, settings={"lr": 0.1})
    run.close()
    with pytest.raises(UserError, match=r"last\.pth was trained with lr 0\.1, not 0\.2: resume with the same flags"):
        TrainingRun(tmp_path, "test-run", 1, 0, "cpu", resume=True).resume(model, optimizer, scaler, settings={"lr": 0.2})
    # A setting added since the checkpoint was written is not held against it.
    resumed = TrainingRun(tmp_path, "test-run", 1, 0, "cpu", resume=True).resume(model, optimizer, scaler, {"lr": 0.1, "new": 3})
    assert resumed["epoch"] == 1
    # A checkpoint written before settings were saved is held to the flags it saved.
    run.save(model, optimizer, scaler, 2, {"epoch": 2, "lr": 0.1, "train": {"loss": 1.0}}, args={"lr": 0.1})
    with pytest.raises(UserError, match=r"trained with lr 0\.1, not 0\.2"):
        TrainingRun(tmp_path, "test-run", 1, 0, "cpu", resume=True).resume(model, optimizer, scaler, settings={"lr": 0.2})

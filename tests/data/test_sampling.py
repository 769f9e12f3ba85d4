"""Task-balanced sampling: target task distribution, disjoint deterministic rank shares, resumable state."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from ipt_dist.data.sampling import TaskBalancedSampler, task_probabilities

SIZES = [10, 30, 60]


def draw_global(sampler: TaskBalancedSampler, steps: int) -> list[list[tuple[int, int]]]:
    return [sampler.next_batch() for _ in range(steps)]


def test_temperature_one_is_proportional_and_large_is_uniform():
    proportional = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    torch.testing.assert_close(task_probabilities(SIZES, 1.0), proportional)
    torch.testing.assert_close(task_probabilities(SIZES, 1e6), torch.full((3,), 1 / 3, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    # in between: sqrt-smoothed, still ordered by size
    p = task_probabilities(SIZES, 2.0)
    assert 0.1 < p[0] < 1 / 3 and p[0] < p[1] < p[2]


@pytest.mark.parametrize("temperature,target", [(1.0, [0.1, 0.3, 0.6]), (1000.0, [1 / 3, 1 / 3, 1 / 3])])
def test_empirical_task_frequencies_match_the_target(temperature, target):
    sampler = TaskBalancedSampler(SIZES, global_batch=20, temperature=temperature, seed=3)
    draws = [t for batch in draw_global(sampler, 1500) for t, _ in batch]  # 30,000 draws over 300 epochs
    counts = Counter(draws)
    n = len(draws)
    for task, p in enumerate(target):
        freq = counts[task] / n
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(freq - p) < 5 * sigma, f"task {task}: {freq:.4f} vs target {p:.4f}, T={temperature}"


def test_ranks_take_disjoint_shares_of_the_same_global_batches():
    world, G = 4, 16
    single = TaskBalancedSampler(SIZES, G, temperature=2.0, seed=7)
    ranks = [TaskBalancedSampler(SIZES, G, temperature=2.0, seed=7, rank=r, world_size=world)
             for r in range(world)]
    for step in range(40):  # crosses several epochs (epoch = 100 draws = 6 steps)
        full = single.next_batch()
        shares = [s.next_batch() for s in ranks]
        assert all(len(s) == G // world for s in shares)
        # rank r holds positions [r*G/world, (r+1)*G/world) of the global batch: a partition, no overlap,
        # and 1 worker or `world` workers train on exactly the same global batch
        assert [pair for share in shares for pair in share] == full, f"step {step}"
        positions = [set(range(r * G // world, (r + 1) * G // world)) for r in range(world)]
        assert set.union(*positions) == set(range(G)) and sum(map(len, positions)) == G


def test_same_seed_same_order_other_seed_other_order():
    a = draw_global(TaskBalancedSampler(SIZES, 8, seed=11, rank=1, world_size=2), 30)
    b = draw_global(TaskBalancedSampler(SIZES, 8, seed=11, rank=1, world_size=2), 30)
    c = draw_global(TaskBalancedSampler(SIZES, 8, seed=12, rank=1, world_size=2), 30)
    assert a == b
    assert a != c
    # consecutive epochs are reshuffled, not repeated
    s = TaskBalancedSampler(SIZES, 10, seed=11)
    assert s.global_batch_at(0) != s.global_batch_at(10)  # epoch 0 vs epoch 1 (10 steps per epoch)


def test_every_example_of_a_task_is_used_before_any_repeats():
    sampler = TaskBalancedSampler(SIZES, 10, temperature=1.0, seed=5)
    epoch = [pair for step in range(10) for pair in sampler.global_batch_at(step)]  # one epoch
    for task, n in enumerate(SIZES):
        examples = [i for t, i in epoch if t == task]
        first = examples[:n]
        assert len(set(first)) == len(first), f"task {task} repeats an example before using all {n}"
        assert all(0 <= i < n for i in examples)


def test_state_dict_resumes_the_exact_sequence():
    sampler = TaskBalancedSampler(SIZES, 8, temperature=3.0, seed=2, rank=1, world_size=2)
    draw_global(sampler, 13)
    state = sampler.state_dict()
    expected = draw_global(sampler, 9)
    resumed = TaskBalancedSampler(SIZES, 8, temperature=3.0, seed=2, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert state["step"] == 13
    assert draw_global(resumed, 9) == expected
    with pytest.raises(ValueError, match="another task set or seed"):
        TaskBalancedSampler([10, 30], 8, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="another task set or seed"):
        TaskBalancedSampler(SIZES, 8, seed=3).load_state_dict(state)


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="not divisible by world size 3"):
        TaskBalancedSampler(SIZES, 8, world_size=3)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TaskBalancedSampler(SIZES, 8, temperature=0.0)
    with pytest.raises(ValueError, match="at least one training example"):
        TaskBalancedSampler([10, 0], 8)

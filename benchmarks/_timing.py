"""Interleaved timing: every contender is sampled once per round, in turn.

Load from other processes then hits every contender alike; each sample is
the wall time of ``steps`` calls (``time.perf_counter`` around a final
``block_until_ready``, after a warm-up that compiles), divided by ``steps``.
The starting contender rotates each round so none always follows the same
one. Samples of one round pair up: the ratio of two contenders' samples in
the same round is a paired measure whose spread is the run's noise. Callers
list contenders compared with each other next to each other.
"""

import dataclasses
import math
import time
from typing import Callable

import numpy as np


@dataclasses.dataclass
class Contender:
    """``run(n)`` takes ``n`` steps and returns once their results are ready."""

    name: str
    run: Callable[[int], None]


def warm_up(contenders: list[Contender], steps: int = 2) -> None:
    for contender in contenders:
        contender.run(steps)


def seconds_per_step(contender: Contender, steps: int = 1) -> float:
    start = time.perf_counter()
    contender.run(steps)
    return (time.perf_counter() - start) / steps


def steps_per_sample(contender: Contender, target_seconds: float) -> int:
    """How many steps make a sample last about ``target_seconds``."""
    return max(1, math.ceil(target_seconds / seconds_per_step(contender)))


def interleaved(contenders: list[Contender], rounds: int, steps: int) -> dict:
    """``{name: [seconds per step in round 0, 1, ...]}``."""
    samples = {c.name: [] for c in contenders}
    for r in range(rounds):
        shift = r % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            samples[contender.name].append(seconds_per_step(contender, steps))
    return samples


def summary(samples: list[float]) -> dict:
    """Median and quartiles, in seconds."""
    q25, median, q75 = np.percentile(samples, [25, 50, 75])
    return {"median_s": float(median), "q25_s": float(q25), "q75_s": float(q75)}


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict:
    """The ratio of medians; the median and quartiles of the per-round ratios.

    Under changing load the per-round (paired) ratios are the steadier
    measure: both samples of a round were taken moments apart.
    """
    per_round = np.asarray(numerator) / np.asarray(denominator)
    q25, median, q75 = np.percentile(per_round, [25, 50, 75])
    ratio = float(np.median(numerator) / np.median(denominator))
    return {
        "ratio": ratio,
        "paired_ratio": float(median),
        "ratio_q25": float(q25),
        "ratio_q75": float(q75),
    }

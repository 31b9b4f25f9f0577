"""Monte Carlo estimate of pi, split into independent tasks.

Each task throws darts at the unit square with its own seeded RNG, so tasks
are embarrassingly parallel and the result is reproducible; the reduce step
just pools the counts.
"""

from __future__ import annotations

import random

SAMPLES_PER_TASK = 20_000


def sample(seed: int) -> dict:
    """Count points of the unit square that fall inside the quarter circle.

    A per-seed ``random.Random`` keeps each task deterministic and independent
    of every other task, wherever it runs.
    """
    rng = random.Random(seed)
    inside = 0
    for _ in range(SAMPLES_PER_TASK):
        x = rng.random()
        y = rng.random()
        if x * x + y * y <= 1.0:
            inside += 1
    return {"inside": inside, "total": SAMPLES_PER_TASK}


def estimate(results: list[dict]) -> dict:
    """Pool the counts of all tasks: the quarter-circle area ratio is pi/4."""
    inside = sum(r["inside"] for r in results)
    total = sum(r["total"] for r in results)
    return {"pi": 4 * inside / total, "samples": total}

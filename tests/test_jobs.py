"""Tests for the example job modules in jobs/ (a plain folder, not a package)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "jobs"))

import fold  # noqa: E402
import pi  # noqa: E402


def test_pi_estimate_over_200_seeds() -> None:
    result = pi.estimate([pi.sample(seed) for seed in range(200)])
    assert result["samples"] == 200 * pi.SAMPLES_PER_TASK
    assert abs(result["pi"] - math.pi) < 0.01


def test_pi_sample_is_deterministic() -> None:
    assert pi.sample(7) == pi.sample(7)
    assert pi.sample(7) != pi.sample(8)
    assert pi.sample(7)["total"] == pi.SAMPLES_PER_TASK


def test_coordinates_of_square() -> None:
    # First bond along +x, then two left turns close a unit square.
    assert fold.coordinates("LL") == [(0, 0), (1, 0), (1, 1), (0, 1)]


def test_coordinates_rejects_self_intersection() -> None:
    # Three left turns bring residue 4 back onto residue 0.
    assert fold.coordinates("LLL") is None
    assert fold.coordinates("RRR") is None


def test_energy_by_hand() -> None:
    # HPPH folded into a square: residues 0 and 3 touch -> one contact.
    assert fold.energy("HPPH", "LL") == -1
    # Straight line: no contacts.
    assert fold.energy("HPPH", "FF") == 0
    # Chain neighbours never count, so HHHH in a square also has one contact.
    assert fold.energy("HHHH", "LL") == -1
    # A P at either end of the contact gives nothing.
    assert fold.energy("PPPH", "LL") == 0
    # U shape of 6: (0,0)(1,0)(2,0)(2,1)(1,1)(0,1); contacts 0-5 and 1-4.
    assert fold.energy("HHPPHH", "FLLF") == -2
    assert fold.energy("HPPPPH", "FLLF") == -1


def test_energy_rejects_bad_input() -> None:
    for sequence, moves in [("HPPH", "L"), ("HPPHP", "LLL")]:
        try:
            fold.energy(sequence, moves)
        except ValueError:
            continue
        raise AssertionError(f"expected ValueError for {sequence!r}, {moves!r}")


def test_anneal_is_deterministic_and_consistent() -> None:
    first = fold.anneal(3, steps=2_000)
    assert first == fold.anneal(3, steps=2_000)
    assert first["seed"] == 3
    assert first["sequence"] == fold.SEQUENCE
    assert len(first["fold"]) == len(fold.SEQUENCE) - 2
    assert fold.coordinates(first["fold"]) is not None
    assert fold.energy(fold.SEQUENCE, first["fold"]) == first["energy"]
    assert first["energy"] < 0


def test_anneal_default_run_is_consistent() -> None:
    result = fold.anneal(0)
    assert fold.energy(result["sequence"], result["fold"]) == result["energy"]
    # The benchmark optimum is -9; nothing can beat it.
    assert -9 <= result["energy"] <= -5


def test_best_picks_minimum_then_lowest_seed() -> None:
    results = [
        {"seed": 4, "energy": -7, "fold": "a", "sequence": "s"},
        {"seed": 2, "energy": -8, "fold": "b", "sequence": "s"},
        {"seed": 1, "energy": -6, "fold": "c", "sequence": "s"},
        {"seed": 0, "energy": -8, "fold": "d", "sequence": "s"},
    ]
    winner = fold.best(results)
    assert winner["seed"] == 0
    assert winner["energy"] == -8
    assert winner["fold"] == "d"
    assert winner["runs"] == 4

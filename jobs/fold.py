"""Toy protein folding: simulated annealing in the 2D HP lattice model.

The HP model (Dill, 1985) reduces a protein to a string of hydrophobic (H) and
polar (P) residues placed on the square lattice as a self-avoiding walk. Each
pair of H residues that touch on the lattice without being chain neighbours
contributes -1 to the energy; folding means finding the lowest-energy walk.
The search is NP-hard in general, which makes many independent annealing runs
(one per seed) a natural map job, and picking the best run the reduce step.

A conformation is encoded by relative moves, one per bond after the first:
'F' (forward), 'L' (turn left), 'R' (turn right). The first bond always points
along +x, so rotations and translations of the same fold share an encoding.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

# Standard 20-mer benchmark (Unger & Moult 1993); its optimum energy is -9.
SEQUENCE = "HPHPPHHPHPPHPHHPPHPH"

MOVES = "FLR"
# Absolute directions in counter-clockwise order, so a left turn is +1.
_DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))
_TURN = {"F": 0, "L": 1, "R": -1}

# Geometric cooling schedule, in units of one H-H contact.
T_START = 2.0
T_END = 0.05
STEPS = 30_000


def coordinates(moves: Sequence[str]) -> list[tuple[int, int]] | None:
    """Lattice positions of every residue, or None if the walk hits itself.

    ``moves`` of length k describes a chain of k + 2 residues.
    """
    x, y = 1, 0
    direction = 0
    coords = [(0, 0), (1, 0)]
    seen = {(0, 0), (1, 0)}
    for move in moves:
        direction = (direction + _TURN[move]) % 4
        dx, dy = _DIRECTIONS[direction]
        x += dx
        y += dy
        if (x, y) in seen:
            return None
        seen.add((x, y))
        coords.append((x, y))
    return coords


def _contacts(coords: list[tuple[int, int]], hydrophobic: set[int]) -> int:
    """Number of H-H lattice neighbours that are not consecutive in the chain."""
    index = {pos: i for i, pos in enumerate(coords)}
    contacts = 0
    for i in hydrophobic:
        x, y = coords[i]
        for dx, dy in _DIRECTIONS:
            j = index.get((x + dx, y + dy))
            # Count each pair once (j > i) and skip the chain bond (j == i + 1).
            if j is not None and j > i + 1 and j in hydrophobic:
                contacts += 1
    return contacts


def _hydrophobic(sequence: str) -> set[int]:
    return {i for i, residue in enumerate(sequence) if residue == "H"}


def energy(sequence: str, moves: Sequence[str]) -> int:
    """HP energy of ``sequence`` folded by ``moves``: minus the H-H contacts.

    Raises ValueError if the lengths disagree or the walk is not self-avoiding.
    """
    if len(sequence) < 2 or len(moves) != len(sequence) - 2:
        raise ValueError("need len(moves) == len(sequence) - 2")
    coords = coordinates(moves)
    if coords is None:
        raise ValueError("walk is not self-avoiding")
    return -_contacts(coords, _hydrophobic(sequence))


def _propose(moves: list[str], rng: random.Random) -> list[str]:
    """Return a changed copy of ``moves``.

    Changing one relative move rotates the whole tail about that residue, so
    it is a pivot move; changing two adjacent moves gives a more local
    rearrangement that helps compact folds settle.
    """
    new = moves.copy()
    i = rng.randrange(len(new))
    new[i] = rng.choice([m for m in MOVES if m != new[i]])
    if len(new) > 1 and rng.random() < 0.5:
        j = i + 1 if i + 1 < len(new) else i - 1
        new[j] = rng.choice(MOVES)
    return new


def anneal(seed: int, sequence: str = SEQUENCE, steps: int = STEPS) -> dict:
    """One simulated-annealing run, deterministic for a given seed.

    Starts from a straight chain (always self-avoiding) and lets the high
    initial temperature randomise it; self-intersecting proposals are simply
    rejected, the rest follow the Metropolis rule. Returns the best fold seen.
    """
    rng = random.Random(seed)
    hydrophobic = _hydrophobic(sequence)
    moves = ["F"] * max(len(sequence) - 2, 0)
    coords = coordinates(moves)
    assert coords is not None
    current = -_contacts(coords, hydrophobic)
    best_energy, best_moves = current, moves

    if moves and steps > 0:
        cooling = (T_END / T_START) ** (1 / max(steps - 1, 1))
        temperature = T_START
        for _ in range(steps):
            candidate = _propose(moves, rng)
            coords = coordinates(candidate)
            if coords is not None:
                proposed = -_contacts(coords, hydrophobic)
                delta = proposed - current
                if delta <= 0 or rng.random() < math.exp(-delta / temperature):
                    moves, current = candidate, proposed
                    if current < best_energy:
                        best_energy, best_moves = current, moves
            temperature *= cooling

    return {
        "seed": seed,
        "energy": best_energy,
        "fold": "".join(best_moves),
        "sequence": sequence,
    }


def best(results: list[dict]) -> dict:
    """Lowest-energy run (ties go to the lowest seed), plus the number of runs."""
    winner = min(results, key=lambda r: (r["energy"], r["seed"]))
    return {**winner, "runs": len(results)}

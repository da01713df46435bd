"""PASHA's decisions as pure functions of the numbers (tested by hand in tests/test_pasha.py).

From Syne Tune v0.14.2 (`PASHARungSystem` and the promotion rung system it extends; the
authors' code, removed from Syne Tune in v0.15.0), rewritten over plain dicts:

    promotable       ASHA's promotion rule: a paused trial moves up from its rung when it is
                     the best not yet promoted and at least as good as the rung's 1 - 1/rf
                     quantile (numpy's linear quantile; a rung of one trial promotes nobody)
    epsilon          the ε of PASHA's soft ranking: a percentile (the paper's 90th) of the
                     score differences, at the latest epoch both reached, of the pairs of
                     trials whose order flipped and then flipped back across the epochs
                     between the top two rungs; None when no pair did (ε is then kept)
    ranking_holds    the soft ranking: at the previous rung, each trial's ε-group is the
                     trials within ε of it (walking away from it until one is not); the
                     ranking holds while the k-th best at the top rung is in the group of
                     the k-th best at the previous rung, for every k
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

Curves = Mapping[str, Mapping[int, float]]  # trial id -> epoch -> metric


def best_first(values: Mapping[str, float], mode: str) -> list[tuple[str, float]]:
    """(trial id, value) pairs, the best first; ties keep the order they were added in."""
    return sorted(values.items(), key=lambda item: -item[1] if mode == "max" else item[1])


def promotable(values: Mapping[str, float], promoted: set[str], reduction_factor: float,
               mode: str) -> str | None:
    """The trial to promote from a rung holding `values`, or None."""
    if len(values) < 2:
        return None
    waiting = [(trial, value) for trial, value in best_first(values, mode)
               if trial not in promoted]
    if not waiting:
        return None
    q = 1 / reduction_factor if mode == "min" else 1 - 1 / reduction_factor
    cutoff = float(np.quantile(list(values.values()), q))
    trial, value = waiting[0]
    good_enough = value <= cutoff if mode == "min" else value >= cutoff
    return trial if good_enough else None


def epsilon(curves: Curves, top_epoch: int, bottom_epoch: int, percentile: float) -> float | None:
    """ε from the pairs of trials that swapped places and swapped back, seen from each epoch in
    (bottom_epoch, top_epoch], latest first; each pair counts once, at the latest such epoch
    both reached (Syne Tune's `_update_epsilon`)."""
    seen: set[frozenset[str]] = set()
    distances = []
    for epoch in range(top_epoch, bottom_epoch, -1):
        there = sorted(trial for trial, curve in curves.items() if epoch in curve)
        for first, second in combinations(there, 2):
            if frozenset((first, second)) in seen:
                continue
            seen.add(frozenset((first, second)))
            if _flipped_and_back(curves[first], curves[second], epoch):
                distances.append(abs(curves[first][epoch] - curves[second][epoch]))
    return float(np.percentile(distances, percentile)) if distances else None


def _flipped_and_back(first: Mapping[int, float], second: Mapping[int, float],
                      epoch: int) -> bool:
    """Walking back from `epoch`: the order of the two was once the opposite, and before
    that the same again. Order is `first > second` (a tie orders second first, as the
    authors' code has it)."""
    ahead = first[epoch] > second[epoch]
    opposite = False
    for earlier in range(epoch - 1, 0, -1):
        if earlier not in first or earlier not in second:
            continue  # not reported (a trial restarted from a checkpoint skips none)
        ahead_then = first[earlier] > second[earlier]
        if ahead_then != ahead:
            opposite = True
        elif opposite:
            return True
    return False


def ranking_holds(top: Mapping[str, float], previous: Mapping[str, float], eps: float,
                  mode: str) -> bool:
    """Whether the trials at the top rung keep their previous rung's ranking up to ε-groups.

    `top` holds the top rung's values; `previous` the previous rung's (only the trials also
    at the top count). With fewer than two of those, ε is 0 (the authors' code)."""
    top_order = [trial for trial, _ in best_first(top, mode) if trial in previous]
    before = best_first({t: v for t, v in previous.items() if t in top}, mode)
    eps = eps if len(before) >= 2 else 0.0
    for position, trial in enumerate(top_order):
        if trial not in _group(before, position, eps, mode):
            return False
    return True


def _group(ranked: Sequence[tuple[str, float]], position: int, eps: float,
           mode: str) -> set[str]:
    """The trial at `position` and its neighbours within ε, walking down then up the ranking
    until one is further than ε from it."""
    _, value = ranked[position]
    worse = (lambda other: other < value - eps) if mode == "max" else (
        lambda other: other > value + eps)
    better = (lambda other: other > value + eps) if mode == "max" else (
        lambda other: other < value - eps)
    group = {ranked[position][0]}
    for trial, other in ranked[position + 1:]:
        if worse(other):
            break
        group.add(trial)
    for trial, other in reversed(ranked[:position]):
        if better(other):
            break
        group.add(trial)
    return group

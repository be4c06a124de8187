"""Evolution's choices: niched parents, and which proposals to evaluate one parent at a time."""
from __future__ import annotations

import numpy as np

from ..schedule import Schedule
from .space import SearchSpace

__all__ = ["diverse_parents", "pick_per_parent"]


def _structure(s: Schedule) -> tuple:
    return (s.afs,) + tuple((st.prediction, st.order, st.corrector, st.relax, st.corrector_relax) for st in s.steps)


def diverse_parents(ranked: list, population: int, space: SearchSpace, per_structure: int = 4,
                     min_distance: float = 0.1) -> list:
    """The best `population` schedules of the ranked pool, with niching: at most `per_structure`
    of one discrete structure (AFS, per-step prediction, order, corrector, relaxations) and none
    within `min_distance` (encoding L2) of a better one. Without it the pool's best places fill
    with near-copies of the incumbent and evolution stalls in one basin (predictor-guided search
    first: its children are good, so they crowd the top); places left empty are filled in rank order."""
    chosen, enc, count = [], [], {}
    for s, _ in ranked:
        if len(chosen) == population:
            break
        st, e = _structure(s), space.encode(s)
        if count.get(st, 0) >= per_structure or any(np.linalg.norm(e - o) < min_distance for o in enc):
            continue
        chosen.append(s)
        enc.append(e)
        count[st] = count.get(st, 0) + 1
    if len(chosen) < population:
        ids = {id(s) for s in chosen}
        chosen += [s for s, _ in ranked if id(s) not in ids][:population - len(chosen)]
    return chosen


def pick_per_parent(owner: list, n_pick: int, rng: np.random.Generator, scores=None, screen: int = 4) -> list:
    """Indices of the proposals to evaluate: one per parent in turn (best parent first, immigrants
    last), so every parent's line keeps being explored. Without scores the parent's proposal is
    drawn at random (plain evolution); with the predictor's scores it is drawn from the predicted
    best 1/screen of that parent's proposals — screening, not chasing: the argmin would follow the
    predictor's extrapolation errors, and one parent's best children would crowd out the rest."""
    groups: dict = {}
    for i, o in enumerate(owner):
        groups.setdefault(o, []).append(i)
    for o, idx in groups.items():
        if scores is not None:
            idx.sort(key=lambda i: scores[i])
            top = idx[:max(1, len(idx) // screen)]
            first = int(top[int(rng.integers(0, len(top)))])
            rest = [i for i in idx if i != first]
        else:
            perm = rng.permutation(len(idx))
            first, rest = idx[int(perm[0])], [idx[int(j)] for j in perm[1:]]
        groups[o] = [first] + rest
    picks, depth = [], 0
    while len(picks) < n_pick:
        for o in sorted(groups):
            if len(picks) < n_pick and depth < len(groups[o]):
                picks.append(groups[o][depth])
        depth += 1
    return picks

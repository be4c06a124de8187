"""The S³ performance predictor: a small MLP from schedule encodings to (log) metric, trained with
a ranking-aware loss (what matters is which candidate is better, not the exact value)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import kendalltau

__all__ = ["Predictor", "ImprovementPredictor"]

CAP_Q = 0.75  # targets are capped at this quantile of the metric


class Predictor:
    def __init__(self, in_dim: int, hidden: int = 64, epochs: int = 200, lr: float = 3e-3, seed: int = 0,
                 rank_weight: float = 1.0, members: int = 3):
        self.in_dim, self.hidden, self.epochs, self.lr, self.seed = in_dim, hidden, epochs, lr, seed
        self.members = members
        self.rank_weight = rank_weight
        self.net = None
        self.tau: float | None = None  # Kendall τ on the held-out split of the last fit

    def _build(self):
        torch.manual_seed(self.seed)
        return torch.nn.Sequential(torch.nn.Linear(self.in_dim, self.hidden), torch.nn.SiLU(),
                                   torch.nn.Linear(self.hidden, self.hidden), torch.nn.SiLU(),
                                   torch.nn.Linear(self.hidden, 1))

    @staticmethod
    def _target(y):
        """log metric, capped at the 75th percentile: the predictor's job is to order the good
        candidates; how bad a failure is does not matter (and would dominate a regression). A
        metric that is not positive everywhere (a user's, e.g. a negative log-likelihood) is
        regressed as it is, with the same cap."""
        y = np.asarray(y, dtype=np.float64)
        finite = np.isfinite(y)
        cap = np.quantile(y[finite], CAP_Q) if finite.any() else 1.0
        capped = np.minimum(np.where(finite, y, cap), cap)
        return np.log(capped) if np.all(capped > 0) else capped

    def _train(self, x: np.ndarray, y: np.ndarray):
        """One member: Adam on `self._loss(y)` (the subclasses' only difference is the loss)."""
        net = self._build()
        xt = torch.as_tensor(x, dtype=torch.float32)
        loss_of = self._loss(torch.as_tensor(y, dtype=torch.float32))
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=1e-4)
        for _ in range(self.epochs):
            loss = loss_of(net(xt).squeeze(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return net

    def _loss(self, yt: torch.Tensor):
        """loss(prediction) for targets yt: MSE on the standardised target plus a pairwise hinge
        on random pairs (order matters most)."""
        yt = (yt - yt.mean()) / (float(yt.std()) + 1e-8)
        g = torch.Generator().manual_seed(self.seed)
        n = len(yt)

        def loss_of(pred):
            loss = torch.nn.functional.mse_loss(pred, yt)
            if self.rank_weight and n > 1:
                i = torch.randint(0, n, (4 * n,), generator=g)
                j = torch.randint(0, n, (4 * n,), generator=g)
                sign = torch.sign(yt[i] - yt[j])
                loss = loss + self.rank_weight * torch.relu(0.1 - sign * (pred[i] - pred[j])).mean()
            return loss
        return loss_of

    def fit(self, x, y) -> "Predictor":
        """Train on encodings x (n, d) and metric values y (n,): an ensemble of `members` MLPs, the
        first on 80% of the data so Kendall τ on the other 20% measures the predictor as it goes."""
        t = self._target(y)
        return self._fit_members(np.asarray(x, dtype=np.float64), t, t)

    def _fit_members(self, x: np.ndarray, target: np.ndarray, truth: np.ndarray):
        """`members` nets trained on (x, target); the first on 80% of the rows, so that Kendall τ of
        its raw output against `truth` on the other 20% (kept in `tau`) measures the predictor."""
        n = len(target)
        self.nets = []
        if n >= 10:
            perm = np.random.default_rng(self.seed + n).permutation(n)
            k = max(2, n // 5)
            net = self._train(x[perm[k:]], target[perm[k:]])
            with torch.no_grad():
                p = net(torch.as_tensor(x[perm[:k]], dtype=torch.float32)).squeeze(-1).numpy()
            tau = kendalltau(p, truth[perm[:k]]).statistic
            self.tau = float(tau) if np.isfinite(tau) else 0.0
            self.nets.append(net)
        base = self.seed
        for m in range(len(self.nets), self.members):
            self.seed = base + 7919 * (m + 1)
            self.nets.append(self._train(x, target))
        self.seed = base
        self.net = self.nets[-1]
        return self

    def predict(self, x) -> np.ndarray:
        """Ensemble mean of the predicted (standardised log) metric; lower is better."""
        if self.net is None:
            raise RuntimeError("Predictor.predict before fit")
        xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        with torch.no_grad():
            return np.mean([net(xt).squeeze(-1).numpy() for net in self.nets], axis=0)


class ImprovementPredictor(Predictor):
    """P(child beats its parent by ≥ 1%): an ensemble of MLPs on (child features, child − parent
    features), trained with class-balanced binary cross-entropy on the search's own (parent, child)
    history. Unlike a regression on the metric it is not drawn to near-copies of good parents (a
    copy does not beat its parent), which is what made regression screening lose diversity."""

    MARGIN = -0.01   # "beats": the relative change (child − parent) / |parent| is below −1%

    @staticmethod
    def _change(child, parent):
        """Relative change (child − parent) / |parent| of the metric (any sign of metric); a failed
        child (inf) counts as 10× worse."""
        c, p = np.asarray(child, dtype=np.float64), np.asarray(parent, dtype=np.float64)
        with np.errstate(all="ignore"):
            change = (c - p) / np.maximum(np.abs(p), 1e-12)
        return np.where(np.isfinite(c) & np.isfinite(change), change, 9.0)

    def _loss(self, yt: torch.Tensor):
        """Class-balanced binary cross-entropy on the logits (yt: 1 = the child beat its parent)."""
        pos = float(yt.mean().clamp(0.02, 0.98))
        weight = torch.where(yt > 0.5, 0.5 / pos, 0.5 / (1 - pos))
        return lambda logits: torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, weight=weight)

    def fit(self, x, child_metric, parent_metric) -> "ImprovementPredictor":
        """x: (n, 2d) pair features; the metrics of each child and its parent. Kendall τ of the
        first member (trained on 80%) against the relative change on the other 20% is kept in `tau`
        (sign-flipped, so that good ranking is positive as for `Predictor`)."""
        change = self._change(child_metric, parent_metric)
        return self._fit_members(np.asarray(x, dtype=np.float64), (change < self.MARGIN).astype(np.float64), -change)

    def predict(self, x) -> np.ndarray:
        """Ensemble mean of −logit P(improve): lower is better, like `Predictor.predict`."""
        return -super().predict(x)

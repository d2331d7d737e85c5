"""The one retrieval evaluator: rankings judged against known relevant items, with a primary figure.

``enclip eval`` scores every task's query groups with it, and the trainer stops early on its primary figure
(validation titles against validation photos plus distractors), so training selects on the metric the
benchmark reports.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from enclip.errors import EnclipError
from enclip.eval.metrics import compute_metrics


@dataclass(frozen=True)
class RetrievalEvaluator:
    relevant: Sequence[Collection[Hashable]]  # per query, the ids of its relevant items (never empty)
    metrics: tuple[str, ...] = ("R@10",)  # figures reported, e.g. ("R@1", "R@10", "MRR@10")
    primary: str = "R@10"  # the figure model selection maximises; one of ``metrics``

    def __post_init__(self) -> None:
        if self.primary not in self.metrics:
            raise EnclipError(f"the primary metric {self.primary!r} must be one of {self.metrics}")

    def per_query(self, ranked: Sequence[Sequence[Hashable]]) -> dict[str, np.ndarray]:
        """Each figure's value for every query (for bootstrap intervals and paired comparisons)."""
        return compute_metrics(ranked, self.relevant, self.metrics)

    def __call__(self, ranked: Sequence[Sequence[Hashable]]) -> dict[str, float]:
        return {name: float(values.mean()) for name, values in self.per_query(ranked).items()}

    def primary_score(self, ranked: Sequence[Sequence[Hashable]]) -> float:
        return self(ranked)[self.primary]

"""The training-free ECI score: hardness balanced against safety, unsafe negatives worth nothing."""
from __future__ import annotations

import numpy as np
import pytest

from negmine.eci import eci_from_texts, eci_scores, sample_random_docs


def _one(s_neg: list[float], s_pos: float = 0.8, s_rand: float = 0.0) -> float:
    return eci_scores(np.array([s_pos]), np.array([s_rand]), [np.array(s_neg)])["eci"]


def test_a_negative_at_or_above_the_positive_is_worth_nothing():
    assert _one([0.8]) == 0.0
    assert _one([0.95]) == 0.0
    r = eci_scores(np.array([0.8]), np.array([0.0]), [np.array([0.9, 0.5])])
    assert r["unsafe_negatives"] == 1


def test_harder_negatives_score_higher_while_they_stay_safe():
    easy, medium, hard = _one([0.1]), _one([0.4]), _one([0.7])
    assert 0 < easy < medium < hard
    # inside the safety margin (10% of the positive-random gap below the positive) the score falls again
    assert _one([0.79]) < hard


def test_a_negative_no_closer_than_a_random_document_is_worth_nothing():
    assert _one([0.0]) == 0.0
    assert _one([-0.3]) == 0.0


def test_more_safe_negatives_carry_more_information():
    assert _one([0.5, 0.5, 0.5, 0.5]) == pytest.approx(np.log2(5) / np.log2(2) * _one([0.5]))


def test_queries_left_without_negatives_count_zero_and_scaleless_queries_are_left_out():
    r = eci_scores(np.array([0.8, 0.8, 0.1]), np.array([0.0, 0.0, 0.2]),
                   [np.array([0.4]), np.array([]), np.array([0.1])])
    assert r["queries"] == 2 and r["queries_without_scale"] == 1
    assert r["eci"] == pytest.approx(_one([0.4]) / 2)


def test_margin_out_of_range_is_refused():
    with pytest.raises(ValueError):
        eci_scores(np.array([0.8]), np.array([0.0]), [np.array([0.4])], margin=0.0)


class _Fixed:
    """An encoder with fixed unit vectors, to check the text plumbing (each text once, max over positives)."""

    def __init__(self, vecs: dict[str, list[float]]) -> None:
        self.vecs = {t: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for t, v in vecs.items()}
        self.calls: list[list[str]] = []

    def encode(self, texts, **kw):
        self.calls.append(list(texts))
        return np.stack([self.vecs[t] for t in texts])


def test_texts_are_encoded_once_and_the_best_positive_sets_the_scale():
    m = _Fixed({"q": [1, 0], "p1": [1, 0.1], "p2": [0, 1], "n": [1, 1], "r": [0, 1]})
    r = eci_from_texts(m, [("q", ["p1", "p2"], ["n"])], ["r"])
    assert len(m.calls) == 1 and sorted(m.calls[0]) == ["n", "p1", "p2", "q", "r"]
    s_pos = float(m.vecs["q"] @ m.vecs["p1"])
    s_n = float(m.vecs["q"] @ m.vecs["n"])
    assert r["eci"] == pytest.approx(_one([s_n], s_pos=s_pos, s_rand=0.0))


def test_random_documents_are_seeded():
    docs = [f"d{i}" for i in range(1000)]
    assert sample_random_docs(docs, 3) == sample_random_docs(docs, 3) != sample_random_docs(docs, 4)

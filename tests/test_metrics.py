"""Kaggle's metric: macro ROC-AUC over the classes with at least one positive."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from train.metrics import accuracy, binary_roc_auc, kaggle_score, macro_roc_auc


def test_a_perfect_ranking_scores_one_and_a_reversed_one_zero():
    y = np.array([0, 0, 1, 1])
    assert binary_roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert binary_roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0


def test_roc_auc_counts_the_pairs_a_positive_wins_by_hand():
    # positives 0.9, 0.3 against negatives 0.8, 0.1: 0.9 beats both, 0.3 beats 0.1 only -> 3 of 4 pairs
    assert binary_roc_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.1])) == 0.75


def test_ties_count_half():
    assert binary_roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    # positive 0.5 ties one negative and beats the other: (0.5 + 1) / 2
    assert binary_roc_auc(np.array([1, 0, 0]), np.array([0.5, 0.5, 0.1])) == 0.75


def test_classes_without_a_positive_are_left_out_of_the_mean():
    y = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0]])
    s = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.9], [0.1, 0.9, 0.2], [0.8, 0.7, 0.1]])
    # class 0: positives 0.9, 0.8 beat negatives 0.2, 0.1 -> 1.0
    # class 1: positives 0.8, 0.7 against 0.1, 0.9 -> 2 of 4 pairs -> 0.5; class 2 has no positive
    assert macro_roc_auc(y, s) == pytest.approx(0.75)


def test_the_metric_equals_sklearn_macro_auc_on_the_scored_columns():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 12)) < 0.1).astype(int)
    y[:, 3] = 0  # a class nobody calls in this test set
    s = np.round(rng.random((300, 12)) + 0.3 * y, 2)  # rounding makes ties
    scored = y.sum(axis=0) > 0
    expected = roc_auc_score(y[:, scored], s[:, scored], average="macro")
    assert macro_roc_auc(y, s) == pytest.approx(expected, abs=1e-12)


def test_kaggle_score_matches_rows_by_row_id_whatever_their_order():
    solution = pd.DataFrame({"row_id": ["a_5", "a_10", "a_15"], "x": [1, 0, 0], "y": [0, 1, 0]})
    submission = pd.DataFrame({"row_id": ["a_15", "a_5", "a_10"], "x": [0.1, 0.9, 0.2], "y": [0.3, 0.1, 0.8]})
    assert kaggle_score(solution, submission) == 1.0


def test_kaggle_score_refuses_a_submission_missing_rows():
    solution = pd.DataFrame({"row_id": ["a_5", "a_10"], "x": [1, 0]})
    submission = pd.DataFrame({"row_id": ["a_5"], "x": [0.5]})
    with pytest.raises(ValueError, match="lacks 1 row_id"):
        kaggle_score(solution, submission)


def test_accuracy_is_the_share_of_windows_whose_top_class_is_the_label():
    scores = np.array([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1], [0.2, 0.8]])
    assert accuracy(np.array([0, 1, 1, 1]), scores) == 0.75

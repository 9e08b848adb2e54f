"""mechviz.exercises.check: what it prints and returns for right, wrong and unfinished answers."""

import numpy as np
import pytest
import torch

from mechviz.exercises import check, compare


def _stub():
    raise NotImplementedError


@pytest.mark.parametrize("got, expected", [
    (3, 3), (0.1 + 0.2, 0.3), (np.arange(6.0).reshape(2, 3), torch.arange(6.0).reshape(2, 3)),
    (torch.tensor(2.5, dtype=torch.float64), 2.5), ([1, 2, 3], (1, 2, 3)), ([[1.0, 2.0], [3.0, 4.0]], np.array([[1, 2], [3, 4]])),
    ({"a": 1.0, "b": [2, 3]}, {"b": (2, 3), "a": 1.0 + 1e-9}), ("text", "text"), ([("embed", 4), ("logit", 7)], [("embed", 4), ("logit", 7)]),
    (float("nan"), float("nan")), (np.array([1.0, np.nan]), np.array([1.0, np.nan])), (True, True),
])
def test_right_answers(capsys, got, expected):
    assert check("q", got, expected) is True
    assert capsys.readouterr().out == "✓ q: right\n"


@pytest.mark.parametrize("got, expected, says", [
    (3, 4, "got 3, expected 4"),
    (0.3001, 0.3, "got 0.3001, expected 0.3"),
    (np.zeros(3), np.zeros(4), "shape (3,), expected (4,)"),
    (torch.tensor([1.0, 2.0, 9.0]), np.array([1.0, 2.5, 3.0]), "2 of 3 values differ (largest at [2]: got 9, expected 3)"),
    (np.array([[0.0, 0.0], [0.0, 1.0]]), np.zeros((2, 2)), "1 of 4 values differ (largest at [1, 1]: got 1, expected 0)"),
    ([1, 2], [1, 2, 3], "shape (2,), expected (3,)"),
    (["a", "b"], ["a", "b", "c"], "2 items, expected 3"),
    ({"a": 1}, {"a": 1, "b": 2}, "keys ['a'], expected ['a', 'b']"),
    ({"a": [1, 5]}, {"a": [1, 2]}, "at ['a']: 1 of 2 values differ (largest at [1]: got 5, expected 2)"),
    ([("embed", 4), ("logit", 7)], [("embed", 4), ("logit", 8)], "at [1][1]: got 7, expected 8"),
    ("abc", "abd", "got 'abc', expected 'abd'"),
    (np.array([1.0, np.nan]), np.array([1.0, 2.0]), "1 of 2 values differ (largest at [1]: got nan, expected 2)"),
])
def test_wrong_answers_say_what_differs(capsys, got, expected, says):
    assert check("q", got, expected) is False
    assert capsys.readouterr().out == f"✗ q: wrong: {says}\n"
    assert compare(got, expected) == says


def test_tolerance():
    assert compare(1.0 + 1e-7, 1.0) is None
    assert compare(1.0 + 1e-4, 1.0) is not None
    assert compare(1.0 + 1e-4, 1.0, atol=1e-3) is None
    assert compare(1e6 + 0.5, 1e6) is None          # relative 1e-6 on large values
    assert compare(np.float32(0.1), 0.1) is None    # float32 rounding of 0.1 is within tolerance


def test_unfinished_stubs(capsys):
    assert check("q", _stub, 1.0) is False
    assert capsys.readouterr().out == "✗ q: not done yet\n"
    assert check("q", lambda: _stub() + 1, np.zeros(3)) is False      # raised while computing the answer
    assert capsys.readouterr().out == "✗ q: not done yet\n"
    assert check("q", lambda: None, 1.0) is False                    # a stub body that returns nothing
    assert capsys.readouterr().out == "✗ q: not done yet\n"
    assert check("q", lambda: 2.0, 2.0) is True                       # a finished function is called
    assert capsys.readouterr().out == "✓ q: right\n"
    with pytest.raises(ZeroDivisionError):                            # other errors are the student's to see
        check("q", lambda: 1 / 0, 1.0)

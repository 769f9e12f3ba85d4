"""CrossFit evaluation metrics, in plain Python + numpy + scikit-learn.

Follows the conventions of CrossFit's ``dataloader/metrics.py`` (``evaluate``): every example
has a list of acceptable answers; per-example metrics (ACC, EM, QA-F1, Rouge-L) take the max
over that list and the mean over examples; label metrics (Classification-F1,
Matthew-Correlation) use the first answer as the gold label.

    from ipt_dist.metrics import compute_metric
    compute_metric("QA-F1", ["the cat sat"], [["a cat sat down", "dog"]])  # 0.857...

Where this module departs from the CrossFit code, the function docstring says so.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import f1_score, matthews_corrcoef

from ipt_dist.data.records import METRICS  # the one list: tasks.json names these, this module scores them

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_NON_ALNUM_RE = re.compile(r"[^a-z0-9]+")


# ---------------------------------------------------------------------------------------------
# input checking


def _check_inputs(predictions: Sequence[str], references: Sequence) -> list[list[str]]:
    """Validate ``predictions``/``references`` and return references as ``list[list[str]]``.

    Raises:
        ValueError: if either list is empty, their lengths differ, or an example has no
            reference answers.
        TypeError: if a prediction is not a str, or a reference is neither a str nor a
            list/tuple of str.
    """
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError(
            "predictions and references must be lists (one entry per example), got a bare str; "
            "wrap a single example as [prediction] and [[answer, ...]]"
        )
    if len(predictions) == 0 or len(references) == 0:
        raise ValueError(
            f"cannot score empty inputs: got {len(predictions)} predictions and "
            f"{len(references)} references; pass at least one example"
        )
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} references; "
            "pass exactly one reference list per prediction"
        )
    normalized: list[list[str]] = []
    for i, (prediction, reference) in enumerate(zip(predictions, references)):
        if not isinstance(prediction, str):
            raise TypeError(f"prediction {i} is {type(prediction).__name__}, expected str")
        # A bare str is one acceptable answer.
        answers = [reference] if isinstance(reference, str) else reference
        if not isinstance(answers, (list, tuple)) or not all(isinstance(a, str) for a in answers):
            raise TypeError(
                f"reference {i} must be a str or a list of str, got {reference!r}"
            )
        if len(answers) == 0:
            # CrossFit silently scores such an example 0; an example without answers is a data
            # bug, so it fails fast here instead.
            raise ValueError(f"reference {i} is an empty list; every example needs at least one answer")
        normalized.append(list(answers))
    return normalized


# ---------------------------------------------------------------------------------------------
# text normalisation


def normalize_answer(s: str) -> str:
    """SQuAD answer normalisation: lower-case, drop punctuation and articles, collapse spaces.

    >>> normalize_answer("The  Cat, sat!")
    'cat sat'
    """
    text = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def _rouge_tokenize(s: str) -> list[str]:
    # rouge-score's default tokenizer (no stemming): lower-case, every run of characters
    # outside [a-z0-9] becomes a separator.
    return _NON_ALNUM_RE.sub(" ", s.lower()).split()


def _label(s: str) -> str:
    return s.strip().lower()


# ---------------------------------------------------------------------------------------------
# per-example scores


def _qa_f1_single(prediction: str, reference: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    reference_tokens = normalize_answer(reference).split()
    num_same = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    # SQuAD v1.1 / CrossFit convention: no overlap (including both sides empty) scores 0.
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists, O(len(a) * len(b))."""
    if len(a) < len(b):
        a, b = b, a  # keep the DP row as short as possible
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0] * (len(b) + 1)
        for j, token_b in enumerate(b, start=1):
            if token_a == token_b:
                current[j] = previous[j - 1] + 1
            else:
                current[j] = max(previous[j], current[j - 1])
        previous = current
    return previous[-1]


def _rouge_l_single(prediction: str, reference: str) -> float:
    prediction_tokens = _rouge_tokenize(prediction)
    reference_tokens = _rouge_tokenize(reference)
    if not prediction_tokens or not reference_tokens:
        return 0.0
    lcs = _lcs_length(prediction_tokens, reference_tokens)
    if lcs == 0:
        return 0.0
    precision = lcs / len(prediction_tokens)
    recall = lcs / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def _mean_of_max(
    predictions: Sequence[str], references: list[list[str]], score: Callable[[str, str], float]
) -> float:
    per_example = [max(score(p, r) for r in refs) for p, refs in zip(predictions, references)]
    return float(np.mean(per_example))


# ---------------------------------------------------------------------------------------------
# metrics


def accuracy(predictions: Sequence[str], references: Sequence) -> float:
    """CrossFit ACC: fraction of predictions equal to any reference, case-insensitively.

    Departs from CrossFit, which lower-cases but does not strip: here both sides are also
    stripped, so a trailing space or newline from generation does not count as wrong.

    Raises:
        ValueError, TypeError: on malformed inputs (see ``compute_metric``).
    """
    refs = _check_inputs(predictions, references)
    return _mean_of_max(predictions, refs, lambda p, r: float(_label(p) == _label(r)))


def classification_f1(predictions: Sequence[str], references: Sequence) -> float:
    """CrossFit Classification-F1: macro F1 of predictions vs the first reference answer.

    Classes are the union of gold and predicted labels (sklearn's default), so an
    out-of-vocabulary generation is its own class with F1 0 and pulls the macro average
    down. Departs from CrossFit, which compares raw strings: labels are stripped and
    lower-cased here.

    Raises:
        ValueError, TypeError: on malformed inputs (see ``compute_metric``).
    """
    refs = _check_inputs(predictions, references)
    gold = [_label(r[0]) for r in refs]
    predicted = [_label(p) for p in predictions]
    return float(f1_score(gold, predicted, average="macro", zero_division=0))


def exact_match(predictions: Sequence[str], references: Sequence) -> float:
    """CrossFit EM: SQuAD-normalised exact match, max over references, mean over examples.

    Raises:
        ValueError, TypeError: on malformed inputs (see ``compute_metric``).
    """
    refs = _check_inputs(predictions, references)
    return _mean_of_max(
        predictions, refs, lambda p, r: float(normalize_answer(p) == normalize_answer(r))
    )


def qa_f1(predictions: Sequence[str], references: Sequence) -> float:
    """CrossFit QA-F1: SQuAD token F1, max over references, mean over examples.

    Raises:
        ValueError, TypeError: on malformed inputs (see ``compute_metric``).
    """
    refs = _check_inputs(predictions, references)
    return _mean_of_max(predictions, refs, _qa_f1_single)


def rouge_l(predictions: Sequence[str], references: Sequence) -> float:
    """ROUGE-L F-measure (sentence-level LCS), max over references, mean over examples.

    Departs from CrossFit, which calls the ``rouge`` (pltrdy) package: this follows
    Google's ``rouge-score`` instead (tokens = lower-cased runs of [a-z0-9], no stemming,
    F = 2PR / (P + R)), implemented here without that dependency. As in CrossFit, a
    prediction with no tokens scores 0.

    Raises:
        ValueError, TypeError: on malformed inputs (see ``compute_metric``).
    """
    refs = _check_inputs(predictions, references)
    return _mean_of_max(predictions, refs, _rouge_l_single)


def matthews_correlation(predictions: Sequence[str], references: Sequence) -> float:
    """Matthews correlation of predictions vs the first reference answer, in [-1, 1].

    Departs from CrossFit, which hard-codes glue-cola (maps "acceptable" to 1 and anything
    else to 0): here labels are the stripped, lower-cased strings and sklearn's multi-class
    MCC is used, which equals the binary MCC when there are two labels. Returns 0.0 when
    the MCC is undefined (e.g. all predictions identical), as sklearn does.

    Raises:
        ValueError, TypeError: on malformed inputs (see ``compute_metric``).
    """
    refs = _check_inputs(predictions, references)
    gold = [_label(r[0]) for r in refs]
    predicted = [_label(p) for p in predictions]
    return float(matthews_corrcoef(gold, predicted))


_METRIC_FUNCTIONS: dict[str, Callable[[Sequence[str], Sequence], float]] = {
    "ACC": accuracy,
    "Classification-F1": classification_f1,
    "EM": exact_match,
    "QA-F1": qa_f1,
    "Rouge-L": rouge_l,
    "Matthew-Correlation": matthews_correlation,
}
assert tuple(_METRIC_FUNCTIONS) == METRICS


def _check_name(name: str) -> None:
    if name not in _METRIC_FUNCTIONS:
        raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(METRICS)}")


def compute_metric(name: str, predictions: Sequence[str], references: Sequence) -> float:
    """Score ``predictions`` against ``references`` with the CrossFit metric ``name``.

    Args:
        name: one of ``METRICS`` (CrossFit spelling, e.g. ``"QA-F1"``).
        predictions: one generated string per example.
        references: per example, a list of acceptable answers (a bare str means one answer).

    Returns:
        The score as a float: in [0, 1], or [-1, 1] for Matthew-Correlation.

    Raises:
        ValueError: if ``name`` is unknown, the inputs are empty, their lengths differ, or an
            example has an empty reference list.
        TypeError: if a prediction is not a str or a reference is not a str / list of str.
    """
    _check_name(name)
    return _METRIC_FUNCTIONS[name](predictions, references)


def is_higher_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` is better (true for every CrossFit metric).

    Raises:
        ValueError: if ``name`` is not one of ``METRICS``.
    """
    _check_name(name)
    return True

"""Hand-computed checks of the CrossFit metrics in ipt_dist.metrics.

    PYTHONPATH=. python -m pytest tests/test_metrics.py -q
"""

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ipt_dist import metrics
from ipt_dist.metrics import (
    METRICS,
    accuracy,
    classification_f1,
    compute_metric,
    exact_match,
    is_higher_better,
    matthews_correlation,
    normalize_answer,
    qa_f1,
    rouge_l,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# normalize_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  The  Quick, brown fox!! ", "quick brown fox"),  # lower, punctuation, article, spaces
        ("An apple a day", "apple day"),  # all three articles go
        ("theater anthem", "theater anthem"),  # articles only as whole words
        ("U.S.A.", "usa"),  # punctuation removed, not replaced by a space
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


# ---------------------------------------------------------------------------------------------
# ACC


def test_accuracy_strips_and_lowercases():
    # "Yes " == "yes" -> 1; "no" == "No" (bare str reference) -> 1; "maybe" vs no/nope -> 0
    # mean = 2/3
    score = accuracy(["Yes ", "no", "maybe"], [["yes"], "No", ["no", "nope"]])
    assert score == pytest.approx(2 / 3)


def test_accuracy_max_over_references_and_no_normalisation():
    # second reference matches -> 1; ACC does not drop punctuation: "yes." != "yes" -> 0
    assert accuracy(["b"], [["a", "B"]]) == 1.0
    assert accuracy(["yes."], [["yes"]]) == 0.0


# ---------------------------------------------------------------------------------------------
# Classification-F1


def test_classification_f1_two_classes_by_hand():
    # gold (first reference) = [pos, pos, neg, neg], pred = [pos, neg, neg, neg]
    # pos: TP=1 FP=0 FN=1 -> P=1,   R=1/2 -> F1 = 2*1*(1/2)/(3/2)       = 2/3
    # neg: TP=2 FP=1 FN=0 -> P=2/3, R=1   -> F1 = 2*(2/3)*1/(5/3)       = 4/5
    # macro = (2/3 + 4/5) / 2 = (10/15 + 12/15) / 2 = 11/15
    predictions = [" POS", "neg", "Neg\n", "neg"]
    references = [["pos", "neg"], ["pos"], ["neg", "pos"], "neg"]  # only the first answer counts
    assert classification_f1(predictions, references) == pytest.approx(11 / 15)


def test_classification_f1_out_of_vocabulary_prediction_is_its_own_class():
    # gold = [a, b], pred = [a, c]: classes {a, b, c}
    # a: F1 = 1; b: TP=0 -> 0; c: TP=0 -> 0; macro = 1/3
    assert classification_f1(["a", "c"], [["a"], ["b"]]) == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------
# EM


def test_exact_match_normalisation_and_max_over_references():
    # "The Cat!" -> "cat" == "cat" -> 1
    # "a dog" -> "dog"; references "cat" -> 0, "dog." -> "dog" -> 1; max = 1
    # "cats" vs "cat" -> 0
    # mean = 2/3
    predictions = ["The Cat!", "a dog", "cats"]
    references = [["cat"], ["cat", "dog."], "cat"]
    assert exact_match(predictions, references) == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------
# QA-F1


def test_qa_f1_partial_overlap_by_hand():
    # pred "the cat sat on mat" -> [cat, sat, on, mat] (4 tokens)
    # ref  "a cat sat down"     -> [cat, sat, down]    (3 tokens); common = {cat, sat} = 2
    # P = 2/4, R = 2/3 -> F1 = 2*(1/2)*(2/3) / (1/2 + 2/3) = (2/3) / (7/6) = 4/7
    assert qa_f1(["the cat sat on mat"], [["a cat sat down"]]) == pytest.approx(4 / 7)


def test_qa_f1_max_over_references_mean_over_examples():
    # example 1: max(4/7, F1 vs "dog" = 0) = 4/7; example 2: "blue" vs "red" = 0
    # mean = (4/7 + 0) / 2 = 2/7
    score = qa_f1(["the cat sat on mat", "blue"], [["dog", "a cat sat down"], "red"])
    assert score == pytest.approx(2 / 7)


def test_qa_f1_counts_repeated_tokens_once_per_occurrence():
    # pred {x:2, y:1} & ref {x:1, y:2} = {x:1, y:1} -> 2 common; P = R = 2/3 -> F1 = 2/3
    assert qa_f1(["x x y"], [["x y y"]]) == pytest.approx(2 / 3)


def test_qa_f1_empty_after_normalisation_scores_zero():
    # SQuAD v1.1 / CrossFit: no common tokens -> 0, even when both sides normalise to ""
    assert qa_f1(["the"], [["a"]]) == 0.0


# ---------------------------------------------------------------------------------------------
# Rouge-L


def test_rouge_l_classic_lcs_by_hand():
    # CLRS example: LCS("a b c b d a b", "b d c a b a") = 4 (e.g. "b c b a")
    # P = 4/7, R = 4/6 -> F = 2*(4/7)*(2/3) / (4/7 + 2/3) = (16/21) / (26/21) = 8/13
    # ("a" is kept: rouge tokenisation drops no articles)
    assert rouge_l(["a b c b d a b"], [["b d c a b a"]]) == pytest.approx(8 / 13)


def test_rouge_l_sentence_by_hand():
    # [the cat sat on the mat] vs [the cat was on a mat]: LCS = the cat on mat = 4
    # P = R = 4/6 -> F = 2/3
    assert rouge_l(["The cat sat on the mat."], ["the cat was on a mat"]) == pytest.approx(2 / 3)


def test_rouge_l_tokenisation_and_empty_prediction():
    # non [a-z0-9] characters split tokens: "Hello, World!" -> [hello, world]; identical -> 1
    assert rouge_l(["Hello, World!"], [["hello world"]]) == 1.0
    # "don't" -> [don, t] vs [don, t] -> 1
    assert rouge_l(["don't"], [["don t"]]) == 1.0
    # a prediction with no tokens scores 0 (as CrossFit does)
    assert rouge_l(["!!!"], [["anything"]]) == 0.0


def test_rouge_l_max_over_references_mean_over_examples():
    # example 1: max("x y" vs "z" = 0, vs "x y" = 1) = 1
    # example 2: [p q] vs [q r]: LCS = 1, P = R = 1/2 -> F = 1/2
    # mean = 3/4
    assert rouge_l(["x y", "p q"], [["z", "x y"], ["q r"]]) == pytest.approx(3 / 4)


# ---------------------------------------------------------------------------------------------
# Matthew-Correlation


def _labels(tp, fn, fp, tn):
    gold = ["acceptable"] * (tp + fn) + ["unacceptable"] * (fp + tn)
    pred = ["acceptable"] * tp + ["unacceptable"] * fn + ["acceptable"] * fp + ["unacceptable"] * tn
    return pred, [[g] for g in gold]


def test_matthews_correlation_2x2_by_hand():
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))
    # TP=3 FN=1 FP=2 TN=4: (12 - 2) / sqrt(5*4*6*5) = 10 / sqrt(600) = 1/sqrt(6)
    pred, gold = _labels(tp=3, fn=1, fp=2, tn=4)
    assert matthews_correlation(pred, gold) == pytest.approx(1 / math.sqrt(6))
    # TP=2 FN=1 FP=1 TN=2: (4 - 1) / sqrt(3*3*3*3) = 3/9 = 1/3
    pred, gold = _labels(tp=2, fn=1, fp=1, tn=2)
    assert matthews_correlation(pred, gold) == pytest.approx(1 / 3)


def test_matthews_correlation_extremes():
    # every label flipped: TP=TN=0 -> (0 - 2*2) / sqrt(2*2*2*2) = -1
    pred, gold = _labels(tp=0, fn=2, fp=2, tn=0)
    assert matthews_correlation(pred, gold) == pytest.approx(-1.0)
    # labels are stripped/lower-cased: " Acceptable" counts as "acceptable" -> perfect = 1
    assert matthews_correlation([" Acceptable", "unacceptable"], [["acceptable"], ["unacceptable"]]) == 1.0
    # constant prediction: denominator 0 -> sklearn's convention 0.0
    assert matthews_correlation(["acceptable"] * 2, [["acceptable"], ["unacceptable"]]) == 0.0


# ---------------------------------------------------------------------------------------------
# compute_metric and errors


@pytest.mark.parametrize(
    "name, function",
    [
        ("ACC", accuracy),
        ("Classification-F1", classification_f1),
        ("EM", exact_match),
        ("QA-F1", qa_f1),
        ("Rouge-L", rouge_l),
        ("Matthew-Correlation", matthews_correlation),
    ],
)
def test_compute_metric_dispatches_by_crossfit_name(name, function):
    predictions = ["the cat sat", "dog", "a b"]
    references = [["cat sat down"], ["dog", "cat"], "b"]
    score = compute_metric(name, predictions, references)
    assert type(score) is float
    assert score == function(predictions, references)
    assert is_higher_better(name) is True


def test_metric_names_are_the_crossfit_six():
    assert METRICS == ("ACC", "Classification-F1", "EM", "QA-F1", "Rouge-L", "Matthew-Correlation")


def test_unknown_metric_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown metric 'BLEU'") as excinfo:
        compute_metric("BLEU", ["a"], [["a"]])
    for name in METRICS:
        assert name in str(excinfo.value)
    with pytest.raises(ValueError, match="unknown metric"):
        is_higher_better("acc")  # names are case-sensitive, as in CrossFit


@pytest.mark.parametrize("name", METRICS)
def test_length_mismatch_and_empty_inputs_raise(name):
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_metric(name, ["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="empty"):
        compute_metric(name, [], [])


def test_malformed_references_and_predictions_raise():
    with pytest.raises(ValueError, match="reference 1 is an empty list"):
        exact_match(["a", "b"], [["a"], []])
    with pytest.raises(TypeError, match="reference 0 must be a str or a list of str"):
        exact_match(["a"], [[1]])
    with pytest.raises(TypeError, match="prediction 0 is int"):
        accuracy([3], [["3"]])
    with pytest.raises(TypeError, match="bare str"):
        accuracy("abc", ["abc"])


def test_metrics_module_imports_no_heavy_frameworks():
    # The module itself must not import torch/ray/mlflow/deepspeed ...
    tree = ast.parse(Path(metrics.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported.isdisjoint({"torch", "ray", "mlflow", "deepspeed", "rouge", "rouge_score"})
    # ... and importing it must not pull in the orchestration frameworks transitively.
    code = (
        "import sys, ipt_dist.metrics; "
        "print(sorted(m for m in ('ray', 'mlflow', 'deepspeed') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"

"""Synthetic demo tasks (`write_demo_tasks`): the JSONL layout plus a ``tasks.json``, so the
project trains and tests end to end without shared/data.

Tiny, seeded tasks over a ~150-word vocabulary. They share lexicons (sentiment words, topic nouns,
colours) and input templates, so their soft prompts should differ along a few directions only: the
low-dimensional task subspace IPT looks for. Plain Python.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_demo_tasks"]

_POSITIVE = ("good", "great", "happy", "nice", "lovely", "fun", "sweet", "fine")
_NEGATIVE = ("bad", "awful", "sad", "poor", "ugly", "boring", "nasty", "dull")
_TOPICS = {
    "sports": ("ball", "goal", "team", "match", "coach", "race", "tennis", "player"),
    "food": ("bread", "soup", "cake", "rice", "apple", "cheese", "pizza", "pasta"),
    "animals": ("dog", "cat", "horse", "bird", "fish", "cow", "rabbit", "sheep"),
    "music": ("song", "drum", "piano", "band", "guitar", "singer", "concert", "violin"),
}
_COLOURS = ("red", "blue", "green", "yellow", "black", "white", "pink", "brown")
_DETS = ("the", "this", "that", "my", "our", "your", "her", "his")
_PRONOUNS = ("we", "they", "i", "you", "she", "he")
_VERBS = ("saw", "liked", "found", "made", "got", "watched", "heard", "wanted")
_WHEN = ("today", "yesterday", "again", "at home", "last week", "this morning")
_INTENSIFIERS = ("very", "really", "quite", "so")
_NOUNS = tuple(w for words in _TOPICS.values() for w in words)

# A generator gets an rng and the example index (used to balance labels) and returns
# (input, outputs, options or None).
_Gen = Callable[[random.Random, int], tuple[str, list[str], list[str] | None]]


def _maybe(rng: random.Random, words: Sequence[str], p: float = 0.5) -> list[str]:
    return [rng.choice(words)] if rng.random() < p else []


def _gen_sentiment(rng: random.Random, i: int):
    label = ("negative", "positive")[i % 2]
    adj = rng.choice(_POSITIVE if label == "positive" else _NEGATIVE)
    intens = _maybe(rng, _INTENSIFIERS)
    words = [rng.choice(_DETS), rng.choice(_NOUNS), "was", *intens, adj, *_maybe(rng, _WHEN)]
    return " ".join(words), [label], ["negative", "positive"]


def _gen_sentiment_negated(rng: random.Random, i: int):
    label = ("negative", "positive")[i % 2]
    negated = (i // 2) % 2 == 1  # balanced over (label, negated)
    lexicon = _POSITIVE if (label == "positive") != negated else _NEGATIVE
    words = [rng.choice(_DETS), rng.choice(_NOUNS), "was", *(["not"] if negated else []), rng.choice(lexicon)]
    return " ".join(words + _maybe(rng, _WHEN)), [label], ["negative", "positive"]


def _gen_topic(rng: random.Random, i: int):
    labels = sorted(_TOPICS)
    label = labels[i % len(labels)]
    nouns = _TOPICS[label]
    words = [rng.choice(_PRONOUNS), rng.choice(_VERBS), rng.choice(_DETS), rng.choice(nouns)]
    if rng.random() < 0.5:
        words += ["and", rng.choice(_DETS), rng.choice(nouns)]
    return " ".join(words + _maybe(rng, _WHEN, 0.3)), [label], labels


# Same label words as demo_topic (plus colours), so the two tasks share an output space.
_GROUPS = {**_TOPICS, "colours": _COLOURS}


def _gen_word_group(rng: random.Random, i: int):
    labels = sorted(_GROUPS)
    label = labels[i % len(labels)]
    word = rng.choice(_GROUPS[label])
    template = rng.choice((
        "the word {w} is in the group", "which group is {w} in", "{w} belongs to what group",
        "name the group of {w}", "group of the word {w}", "{d} {w} is in which group",
    ))
    return template.format(w=word, d=rng.choice(_DETS)), [label], labels


def _gen_parity(rng: random.Random, i: int):
    label = ("even", "odd")[i % 2]
    n = rng.randrange(0, 100, 2) + (label == "odd")
    template = rng.choice(
        ("the number is {n}", "{p} counted {n} of them", "{p} have {n} {x} now", "is {n} even or odd")
    )
    text = template.format(n=n, p=rng.choice(_PRONOUNS), x=rng.choice(_NOUNS))
    return text, [label], ["even", "odd"]


def _gen_has_colour(rng: random.Random, i: int):
    label = ("no", "yes")[i % 2]
    words = rng.sample(_NOUNS, rng.randint(3, 6))
    if label == "yes":
        words.insert(rng.randrange(len(words) + 1), rng.choice(_COLOURS))
    return " ".join(words), [label], ["no", "yes"]


def _gen_pick_animal(rng: random.Random, i: int):
    others = [w for t, ws in _TOPICS.items() if t != "animals" for w in ws] + list(_COLOURS)
    answer = rng.choice(_TOPICS["animals"])
    options = [*rng.sample(others, 2), answer]
    rng.shuffle(options)
    return "pick the animal : " + " ".join(options), [answer], options


def _word_list(rng: random.Random) -> list[str]:
    return rng.sample(_NOUNS + _COLOURS + _POSITIVE + _NEGATIVE, rng.randint(3, 6))


def _gen_copy_first(rng: random.Random, i: int):
    words = _word_list(rng)
    return " ".join(words), [words[0]], None


def _gen_copy_last(rng: random.Random, i: int):
    words = _word_list(rng)
    return " ".join(words), [words[-1]], None


def _gen_first_two(rng: random.Random, i: int):
    words = _word_list(rng)
    return " ".join(words), [" ".join(words[:2])], None


def _gen_sentiment_word(rng: random.Random, i: int):
    adj = rng.choice(_POSITIVE if i % 2 else _NEGATIVE)
    intens = _maybe(rng, _INTENSIFIERS)
    words = [rng.choice(_DETS), rng.choice(_NOUNS), "was", *intens, adj, *_maybe(rng, _WHEN)]
    # With an intensifier both "very good" and "good" are acceptable answers (exercises references).
    outputs = [" ".join(intens + [adj]), adj] if intens else [adj]
    return " ".join(words), outputs, None


# name -> (generator, category, task_type, metric)
_DEMO_TASKS: dict[str, tuple[_Gen, str, str, str]] = {
    "demo_sentiment": (_gen_sentiment, "classification/sentiment", "classification", "ACC"),
    "demo_sentiment_negated": (
        _gen_sentiment_negated, "classification/sentiment", "classification", "Classification-F1"),
    "demo_topic": (_gen_topic, "classification/topic", "classification", "ACC"),
    "demo_word_group": (_gen_word_group, "classification/topic", "classification", "Classification-F1"),
    "demo_parity": (_gen_parity, "classification/number", "classification", "ACC"),
    "demo_has_colour": (_gen_has_colour, "classification/detection", "classification", "Classification-F1"),
    "demo_pick_animal": (_gen_pick_animal, "multiple_choice/lexical", "multiple_choice", "ACC"),
    "demo_copy_first": (_gen_copy_first, "generation/copy", "generation", "EM"),
    "demo_copy_last": (_gen_copy_last, "generation/copy", "generation", "EM"),
    "demo_first_two": (_gen_first_two, "generation/copy", "generation", "Rouge-L"),
    "demo_sentiment_word": (_gen_sentiment_word, "generation/extraction", "generation", "QA-F1"),
}


def _demo_split_records(name: str, gen: _Gen, sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    # crc32, not hash(): str hashes are salted per process and would break determinism.
    rng = random.Random(seed * 1_000_003 + zlib.crc32(name.encode()))
    total = sum(sizes.values())
    seen: set[str] = set()
    records: list[dict] = []
    misses = 0  # consecutive duplicate inputs: many in a row means the input space is used up
    while len(records) < total:
        inp, outputs, options = gen(rng, len(records))
        if inp in seen:  # splits are disjoint by input, like shared/data
            misses += 1
            if misses > 5000:
                raise ValueError(
                    f"demo task {name!r}: cannot make {total} distinct inputs "
                    f"(stuck at {len(records)}); lower n_train/n_dev/n_test"
                )
            continue
        misses = 0
        seen.add(inp)
        rec: dict[str, Any] = {"input": inp, "output": outputs[0]}
        if options is not None:
            rec["options"] = options
        if len(outputs) > 1:
            rec["references"] = outputs  # shared/data convention: references start with the output
        records.append(rec)
    # Labels were generated round-robin (balanced); shuffle so splits are not ordered by label.
    rng.shuffle(records)
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = records[start : start + n]
        start += n
    return out


def write_demo_tasks(
    out_dir: str | Path, *, n_train: int = 32, n_dev: int = 16, n_test: int = 32, seed: int = 0
) -> list[str]:
    """Write the synthetic demo tasks in the JSONL layout plus a ``tasks.json``; return their names.

    Output is deterministic in (sizes, seed): two calls write byte-identical files. Each task has
    at least ~500 distinct inputs, so a few hundred examples per task are possible.

    Raises:
        ValueError: a size is not positive, or too large for a task's input space.
    """
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    for split, n in sizes.items():
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n_{split} must be a positive integer, got {n!r}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for name, (gen, category, task_type, metric) in _DEMO_TASKS.items():
        splits = _demo_split_records(name, gen, sizes, seed)
        task_dir = root / name
        task_dir.mkdir(exist_ok=True)
        for split, rows in splits.items():
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            (task_dir / f"{split}.jsonl").write_text(text, encoding="utf-8")
        record: dict[str, Any] = {
            "name": name,
            "source": "synthetic demo (ipt_dist.data.write_demo_tasks)",
            "category": category,
            "task_type": task_type,
            "is_classification": task_type == "classification",
            "metric": metric,
        }
        if task_type == "classification":
            record["label_space"] = splits["train"][0]["options"]
        record.update({f"n_{s}": n for s, n in sizes.items()})
        records.append(record)
    (root / "tasks.json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return list(_DEMO_TASKS)

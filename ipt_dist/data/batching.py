"""Tokenise each task once (cached in memory and optionally on disk); the training loops
only index token-id lists, never call the tokenizer."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ipt_dist.data.records import Example, TaskData, TaskInfo

TokenizeFn = Callable[[list[str], list[str]], tuple[list[list[int]], list[list[int]]]]

log = logging.getLogger(__name__)


@dataclass
class TokenizedSplit:
    inputs: list[list[int]]
    targets: list[list[int]]
    references: list[list[str]]  # all acceptable answers, for the metric

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class TokenizedTask:
    info: TaskInfo
    train: TokenizedSplit
    dev: TokenizedSplit
    test: TokenizedSplit

    @property
    def name(self) -> str:
        return self.info.name

    def split(self, name: str) -> TokenizedSplit:
        return {"train": self.train, "dev": self.dev, "test": self.test}[name]


def prefixed_input(task: str, text: str, prefix: bool = True) -> str:
    """The reference's input form: " [task_name] " + input."""
    return f" [{task}] {text}" if prefix else text


def subsample_task(task: TaskData, train_size: int | None, seed: int | None,
                   shots_per_class: int | None = None) -> TaskData:
    """A few-shot draw chosen with `seed`: `shots_per_class` train and dev examples per label for a
    classification task (the label is the target; all of a label that has fewer), else `train_size`
    train and dev examples (None: all). Drawn examples keep their order in the split."""
    per_class = shots_per_class is not None and task.info.is_classification
    if train_size is None and not per_class:
        return task
    if seed is None:  # random.Random(None) would draw differently in every process
        what = f"shots_per_class={shots_per_class}" if per_class else f"train_size={train_size}"
        raise ValueError(f"task {task.name}: a draw of {what} needs a data seed, got None. Fix: set data.data_seed")
    rng = random.Random(seed)

    def pick(xs: list[Example]) -> list[Example]:
        if not per_class:
            return rng.sample(xs, train_size) if len(xs) > train_size else list(xs)
        by_label: dict[str, list[int]] = {}
        for i, ex in enumerate(xs):
            by_label.setdefault(ex.target, []).append(i)
        keep = [i for label in sorted(by_label) for i in
                (rng.sample(by_label[label], shots_per_class) if len(by_label[label]) > shots_per_class
                 else by_label[label])]
        return [xs[i] for i in sorted(keep)]

    return replace(task, train=pick(task.train), dev=pick(task.dev))


def _tokenize_split(name: str, examples: list[Example], tokenize: TokenizeFn, prefix: bool) -> TokenizedSplit:
    inputs = [prefixed_input(name, ex.input, prefix) for ex in examples]
    ids, tgt = tokenize(inputs, [ex.target for ex in examples]) if examples else ([], [])
    return TokenizedSplit(ids, tgt, [list(ex.outputs) for ex in examples])


def token_cache_key(task: TaskData, tag: str, prefix: bool) -> str:
    """Key of a task's token ids: its name, the content of its three splits, the tokenizer `tag`
    and the task-name prefix: anything that changes a token id changes the key."""
    h = hashlib.sha1(f"{tag}|{prefix}".encode())
    for split in (task.train, task.dev, task.test):
        for ex in split:
            h.update(json.dumps([ex.input, ex.outputs]).encode())
        h.update(b"|")
    return f"{task.name}-{h.hexdigest()[:16]}"


_MEMORY: dict[str, TokenizedTask] = {}


def tokenize_task(task: TaskData, tokenize: TokenizeFn, *, tag: str = "", prefix: bool = True,
                  cache_dir: str | Path | None = None) -> TokenizedTask:
    """Token ids of a task's three splits, computed once per (task content, tokenizer tag).

    `tag` must identify the tokenizer and truncation lengths (see `tokenizer_tag`).
    """
    key = token_cache_key(task, tag, prefix)
    if key in _MEMORY:
        return _MEMORY[key]
    path = Path(cache_dir) / f"{key}.json" if cache_dir else None
    if path is not None and path.is_file():
        raw = json.loads(path.read_text())
        tok = TokenizedTask(task.info, *(TokenizedSplit(**raw[s]) for s in ("train", "dev", "test")))
    else:
        tok = TokenizedTask(
            task.info,
            _tokenize_split(task.name, task.train, tokenize, prefix),
            _tokenize_split(task.name, task.dev, tokenize, prefix),
            _tokenize_split(task.name, task.test, tokenize, prefix),
        )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # A unique temp name: concurrent workers (on several nodes of a shared file system)
            # tokenising the same task must not write into one file.
            tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex}.tmp")
            try:
                tmp.write_text(json.dumps({s: vars(tok.split(s)) for s in ("train", "dev", "test")}))
                tmp.replace(path)
            except OSError as exc:  # the cache only saves time: a full disk must not fail training
                tmp.unlink(missing_ok=True)
                log.warning("token cache %s not written (%s); tokenising again next time", path,
                            exc.strerror or exc)
    _MEMORY[key] = tok
    return tok


def tokenizer_tag(backbone) -> str:
    """Identifies what changes token ids: model name, vocabulary size, truncation lengths, chat template."""
    c = backbone.cfg
    tag = f"{backbone.name}|{len(backbone.tokenizer)}|{c.max_input_len}|{c.max_target_len}|chat={c.chat_template}"
    return tag + (f"|answer_prefix={c.answer_prefix!r}" if c.answer_prefix else "")


def tokenize_tasks(tasks: dict[str, TaskData], backbone, *, prefix: bool = True,
                   cache_dir: str | Path | None = None) -> dict[str, TokenizedTask]:
    tag = tokenizer_tag(backbone)
    out = {}
    for n, t in tasks.items():
        cut = [0, 0, 0]  # inputs cut, targets cut, examples tokenised (fresh tokenisation only)

        def counted(inputs, targets, _cut=cut):
            ids, tgt, (n_in, n_tgt) = backbone.tokenize_counted(inputs, targets)
            _cut[0], _cut[1], _cut[2] = _cut[0] + n_in, _cut[1] + n_tgt, _cut[2] + len(inputs)
            return ids, tgt

        out[n] = tokenize_task(t, counted, tag=tag, prefix=prefix, cache_dir=cache_dir)
        if cut[0] or cut[1]:  # said once, when the task is first tokenised (not on cache hits)
            log.info("task %s: %d of %d inputs longer than backbone.max_input_len=%d and %d targets longer than "
                     "max_target_len-1=%d were cut (see Backbone.tokenize_counted for what is kept)", n, cut[0],
                     cut[2], backbone.cfg.max_input_len, cut[1], backbone.cfg.max_target_len - 1)
    return out

"""The token cache: its key changes with everything that changes token ids."""

from types import SimpleNamespace

from ipt_dist.config import BackboneConfig
from ipt_dist.data.batching import token_cache_key, tokenize_task, tokenizer_tag
from ipt_dist.data.tasks import Example, TaskData, TaskInfo


def _task(text: str = "the dog was good") -> TaskData:
    ex = Example(text, ("positive",))
    return TaskData(TaskInfo("demo"), train=[ex], dev=[ex], test=[ex])


def _backbone(**cfg) -> SimpleNamespace:
    return SimpleNamespace(name="tiny-t5", tokenizer=[0] * 100, cfg=BackboneConfig(**cfg))


def test_cache_key_changes_with_every_field_that_changes_token_ids():
    base = token_cache_key(_task(), tokenizer_tag(_backbone()), True)
    assert base == token_cache_key(_task(), tokenizer_tag(_backbone()), True)  # deterministic
    assert base != token_cache_key(_task(), tokenizer_tag(_backbone(chat_template=True)), True)
    assert base != token_cache_key(_task(), tokenizer_tag(_backbone(max_input_len=32)), True)
    assert base != token_cache_key(_task(), tokenizer_tag(_backbone(max_target_len=8)), True)
    assert base != token_cache_key(_task(), tokenizer_tag(_backbone()), False)  # task prefix
    assert base != token_cache_key(_task("the dog was bad"), tokenizer_tag(_backbone()), True)
    # fields that do not change token ids share the cache
    assert base == token_cache_key(_task(), tokenizer_tag(_backbone(num_beams=1, dtype="bfloat16")), True)


def test_toggling_the_chat_template_does_not_reuse_cached_tokens(tmp_path):
    calls = []

    def tokenize(inputs, targets):
        calls.append(len(inputs))
        return [[1, 2]] * len(inputs), [[3]] * len(targets)

    for chat in (False, True, False):
        tokenize_task(_task("a fresh input"), tokenize, tag=tokenizer_tag(_backbone(chat_template=chat)),
                      cache_dir=tmp_path)
    assert calls == [1, 1, 1] * 2  # two tag values: each tokenised once (3 splits), the third call cached
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_shots_per_class_draws_that_many_of_each_label_and_train_size_for_other_tasks():
    """The reference's few-shot data: 16 per class for classification, a total for other tasks.
    A label with fewer examples gives all it has; the seed picks which; other tasks are unchanged."""
    import pytest

    from ipt_dist.data.batching import subsample_task

    labels = ["a"] * 10 + ["b"] * 6 + ["c"] * 2
    exs = [Example(f"x{i}", (lab,)) for i, lab in enumerate(labels)]
    cls = TaskData(TaskInfo("cls", is_classification=True, task_type="classification"), train=exs, dev=exs[::-1],
                   test=exs)
    got = subsample_task(cls, train_size=5, seed=1, shots_per_class=4)
    for split in (got.train, got.dev):
        counts = {lab: sum(ex.target == lab for ex in split) for lab in "abc"}
        assert counts == {"a": 4, "b": 4, "c": 2}
    assert [ex.input for ex in got.train] == sorted((ex.input for ex in got.train), key=lambda s: int(s[1:]))
    assert got.test == exs  # test is never drawn
    assert subsample_task(cls, 5, 1, 4).train == got.train  # the seed decides ...
    assert subsample_task(cls, 5, 2, 4).train != got.train  # ... and another seed draws others
    gen = TaskData(TaskInfo("gen", metric="EM", task_type="generation"), train=exs, dev=exs, test=exs)
    assert len(subsample_task(gen, train_size=5, seed=1, shots_per_class=4).train) == 5
    assert subsample_task(gen, None, 1, 4) is gen
    with pytest.raises(ValueError, match="shots_per_class=4 needs a data seed"):
        subsample_task(cls, None, None, 4)

"""Fit then extract, on both model families: the loss falls and training examples come back.

A randomly initialised model has to learn to copy the sentence and to insert the markers, so
these runs use full fine-tuning with AdamW (a 1% mask of a random model learns too slowly to
memorise anything in a test's budget). Sparse methods are exercised in test_methods.py and
test_delta.py, and on a pretrained base in bench/quality.py.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

import core

STEPS = {"tiny-t5": 260, "tiny-causal": 260}


@pytest.mark.parametrize("name", ["tiny-t5", "tiny-causal"])
def test_fit_then_extract_reproduces_training_examples(
    name: str, ner_spec: core.TaskSpec, ner_train: list[dict[str, Any]]
) -> None:
    base = core.load_base(name, device="cpu")
    steps: list[core.StepInfo] = []
    evals: list[core.EvalInfo] = []

    class Record(core.Callbacks):
        def on_step(self, info: core.StepInfo) -> None:
            steps.append(info)

        def on_evaluation(self, info: core.EvalInfo) -> None:
            evals.append(info)

    result = core.fit(
        base,
        ner_spec,
        ner_train,
        validation_examples=ner_train[:2],
        method=core.MethodConfig(type="full"),
        config=core.TrainConfig(
            max_steps=STEPS[name],
            batch_size=3,
            learning_rate=3e-3,
            optimizer="adamw",
            seed=0,
            eval_every=STEPS[name] // 2,
        ),
        callbacks=Record(),
    )
    assert len(steps) == result.steps
    first = sum(s.loss for s in steps[:10]) / 10
    last = sum(s.loss for s in steps[-10:]) / 10
    assert last < 0.2 * first, (first, last)
    assert evals and "score" in evals[-1].metrics
    got = core.extract(base.bind(result.model), ner_spec, [ex["text"] for ex in ner_train])
    gold = [core.get_task("ner").gold(ex) for ex in ner_train]
    strip = [{"entities": [{k: e[k] for k in ("start", "end", "label")} for e in g["entities"]]} for g in got]
    want = [{"entities": [{k: e[k] for k in ("start", "end", "label")} for e in g["entities"]]} for g in gold]
    matched = sum(a == b for a, b in zip(strip, want, strict=False))
    assert matched >= len(ner_train) - 1, (strip, want)
    for g in got:
        for e in g["entities"]:
            assert 0.0 < e["score"] <= 1.0


def test_fit_is_deterministic_for_a_seed(
    tiny_t5: core.LoadedBase, ner_spec: core.TaskSpec, ner_train: list[dict[str, Any]]
) -> None:
    def run() -> list[float]:
        losses: list[float] = []

        class Record(core.Callbacks):
            def on_step(self, info: core.StepInfo) -> None:
                losses.append(info.loss)

        core.fit(
            tiny_t5,
            ner_spec,
            ner_train,
            method=core.MethodConfig(type="fish_dip", refresh_every=3),
            config=core.TrainConfig(max_steps=7, batch_size=2, seed=5),
            callbacks=Record(),
        )
        return losses

    assert run() == run()


def test_cancellation_is_honoured_within_one_step(
    tiny_t5: core.LoadedBase, ner_spec: core.TaskSpec, ner_train: list[dict[str, Any]]
) -> None:
    seen: list[int] = []

    class Record(core.Callbacks):
        def on_step(self, info: core.StepInfo) -> None:
            seen.append(info.step)

    with pytest.raises(core.FitCancelled):
        core.fit(
            tiny_t5,
            ner_spec,
            ner_train,
            method=core.MethodConfig(type="fish"),
            config=core.TrainConfig(max_steps=50, batch_size=2),
            callbacks=Record(),
            should_stop=lambda: len(seen) >= 3,
        )
    assert seen == [1, 2, 3]


def test_long_text_is_windowed_not_truncated(tiny_t5: core.LoadedBase, ner_spec: core.TaskSpec) -> None:
    from core.extraction import windows

    text = " ".join(f"word{i}" for i in range(400))
    ws = windows(tiny_t5, text)
    assert len(ws) > 1
    assert ws[0].start == 0 and ws[-1].end == len(text)
    # the owned parts tile the whole text
    assert ws[0].own_start == 0 and ws[-1].own_end == len(text)
    for a, b in itertools.pairwise(ws):
        assert a.own_end == b.own_start and b.start < a.end
    out = core.extract(tiny_t5, ner_spec, [text], max_new_tokens=8)
    assert len(out) == 1 and all(0 <= e["start"] < e["end"] <= len(text) for e in out[0]["entities"])

"""Extraction: batched greedy generation, parsing, span confidence, windows for long texts.

* Every span's offsets index the text as given (the task parsers align generated words to
  the original text).
* A span's ``score`` is the geometric mean of the probabilities of the generated tokens
  that make up its bracket group.
* Relation classification ranks every candidate relation by the likelihood of its target
  string (sum of token log-probabilities); its score is that candidate's softmax share.
* Texts longer than one window (``max_source_tokens`` of the base, and half its target
  budget, since the output repeats the input) are split into overlapping word windows;
  each span is kept from the window whose central part holds its midpoint, and offsets
  are shifted back to the whole text. Tasks that cannot be windowed raise instead of
  truncating.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

from .hardware import flush_denormals
from .models import Family, LoadedBase
from .tasks import Task, TaskSpec, get_task


@dataclass
class Generated:
    text: str
    token_ends: list[int]  # character end of each generated token in ``text``
    logprobs: list[float]


@torch.no_grad()
def generate(
    run: LoadedBase, sources: Sequence[str], batch_size: int = 16, max_new_tokens: int | None = None
) -> list[Generated]:
    """Greedy outputs in the order of ``sources``. Sources are batched by length: on a CPU each
    decoding step costs about one read of the weights whatever the batch holds, so a batch
    runs as many steps as its longest member needs, and mixing lengths wastes steps."""
    run.model.eval()
    all_ids = [run.source_ids(s) for s in sources]
    order = sorted(range(len(sources)), key=lambda i: len(all_ids[i]))
    out: list[Generated | None] = [None] * len(sources)
    for i in range(0, len(order), batch_size):
        chunk = order[i : i + batch_size]
        ids = [all_ids[j] for j in chunk]
        budget = max_new_tokens or min(run.max_target_tokens, int(1.5 * max(len(x) for x in ids)) + 16)
        for j, gen in zip(chunk, _generate_batch(run, ids, budget), strict=True):
            out[j] = gen
    return [g for g in out if g is not None]


def _generate_batch(run: LoadedBase, ids: list[list[int]], max_new: int) -> list[Generated]:
    model: Any = run.model
    width = max(len(x) for x in ids)
    left = run.family == "decoder-only"  # decoder-only models continue from the last position
    input_ids = torch.full((len(ids), width), run.pad_id, dtype=torch.long)
    attn = torch.zeros_like(input_ids)
    for r, x in enumerate(ids):
        sl = slice(width - len(x), width) if left else slice(0, len(x))
        input_ids[r, sl] = torch.tensor(x)
        attn[r, sl] = 1
    recorder = _ChosenLogProbs()
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new,
        do_sample=False,
        num_beams=1,
        return_dict_in_generate=True,
        logits_processor=LogitsProcessorList([recorder]),
        eos_token_id=run.eos_id,
        pad_token_id=run.pad_id,
    )
    if run.family == "seq2seq":
        kwargs["decoder_start_token_id"] = getattr(model.config, "decoder_start_token_id", None) or run.pad_id
    res = model.generate(input_ids=input_ids.to(run.device), attention_mask=attn.to(run.device), **kwargs)
    seqs = res.sequences[:, width:] if left else res.sequences[:, 1:]
    logp = torch.stack(recorder.steps, dim=1) if recorder.steps else torch.zeros(len(ids), 0)  # [B, T]
    results = []
    for r in range(len(ids)):
        toks: list[int] = []
        lps: list[float] = []
        for t, tok in enumerate(seqs[r].tolist()):
            if tok == run.eos_id or t >= logp.shape[1]:
                break
            toks.append(tok)
            lps.append(float(logp[r, t]))
        results.append(Generated(run.decode(toks), _token_ends(run, toks), lps))
    return results


class _ChosenLogProbs(LogitsProcessor):
    """Keeps, at each decoding step, the log-probability of the token greedy decoding picks
    (the arg-max), instead of every step's full distribution: [batch] floats a step rather
    than [batch, vocabulary] (1 MB a sentence a token for a 262k vocabulary)."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append(scores.float().log_softmax(-1).max(-1).values.cpu())
        return scores


def _token_ends(run: LoadedBase, toks: list[int]) -> list[int]:
    """Character end of each token in the decoded text (prefix decoding: exact for any
    tokenizer, quadratic in length, which the window size bounds)."""
    return [len(run.decode(toks[: j + 1])) for j in range(len(toks))]


def _span_score(gen: Generated, span: tuple[int, int]) -> float:
    start, end = span
    lps = []
    prev = 0
    for e, lp in zip(gen.token_ends, gen.logprobs, strict=False):
        if e > start and prev < end:
            lps.append(lp)
        prev = e
    return round(math.exp(sum(lps) / len(lps)), 6) if lps else 0.0


@torch.no_grad()
def sequence_logprobs(
    run: LoadedBase, sources: Sequence[str], targets: Sequence[str], batch_size: int = 16
) -> list[float]:
    """Sum of target-token log-probabilities under teacher forcing."""
    out: list[float] = []
    run.model.eval()
    for i in range(0, len(sources), batch_size):
        batch = run.collate(sources[i : i + batch_size], targets[i : i + batch_size]).to(run.device)
        lp, row = run.token_logprobs(batch)
        sums = torch.zeros(batch.labels.shape[0], device=lp.device).index_add_(0, row, lp)
        out += sums.tolist()
    return out


def predict(
    run: LoadedBase,
    spec: TaskSpec,
    inputs: Sequence[Mapping[str, Any]],
    batch_size: int = 16,
    max_new_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """Predictions for inputs that fit in one window (the task's input shape)."""
    flush_denormals()
    task = get_task(spec.type)
    if not inputs:
        return []
    if task.candidates(inputs[0], spec) is not None:
        return _rank(run, task, spec, inputs, batch_size)
    sources = [task.source(inp, spec) for inp in inputs]
    results = []
    for inp, gen in zip(inputs, generate(run, sources, batch_size, max_new_tokens), strict=False):
        dec = task.decode(gen.text, inp, spec)
        pred = dict(dec.prediction)
        key = "entities" if "entities" in pred else "arguments" if "arguments" in pred else None
        if key is not None:
            pred[key] = [
                {**s, "score": _span_score(gen, r)}
                for s, r in zip(pred[key], dec.spans_in_output, strict=False)
            ]
            if "relations" in pred:
                ents = pred[key]
                pred["relations"] = [
                    {**rel, "score": round(min(ents[rel["head"]]["score"], ents[rel["tail"]]["score"]), 6)}
                    for rel in pred["relations"]
                ]
        elif pred:
            pred["score"] = round(math.exp(sum(gen.logprobs) / max(1, len(gen.logprobs))), 6)
        results.append(pred)
    return results


def _rank(
    run: LoadedBase, task: Task, spec: TaskSpec, inputs: Sequence[Mapping[str, Any]], batch_size: int
) -> list[dict[str, Any]]:
    results = []
    for inp in inputs:
        cands = task.candidates(inp, spec) or []
        src = task.source(inp, spec)
        lps = torch.tensor(sequence_logprobs(run, [src] * len(cands), cands, batch_size))
        probs = lps.softmax(0)
        best = int(lps.argmax())
        results.append(
            {"relation": task.label_of_candidate(best, spec), "score": round(float(probs[best]), 6)}
        )
    return results


# ---------------------------------------------------------------------- windows
@dataclass(frozen=True)
class Window:
    start: int  # character offsets into the whole text
    end: int
    own_start: float  # the central part this window answers for
    own_end: float


def windows(run: LoadedBase, text: str, overlap: float = 0.25) -> list[Window]:
    budget = max(16, min(run.max_source_tokens, run.max_target_tokens // 2) - 8)
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    if not words:
        return [Window(0, len(text), 0, len(text))]
    counts = [
        len(c) for c in run.tokenizer([text[a:b] for a, b in words], add_special_tokens=False)["input_ids"]
    ]
    if sum(counts) <= budget:
        return [Window(0, len(text), 0, len(text))]
    spans: list[tuple[int, int]] = []  # word index ranges
    i = 0
    while i < len(words):
        j, used = i, 0
        while j < len(words) and (used + counts[j] <= budget or j == i):
            used += counts[j]
            j += 1
        spans.append((i, j))
        if j >= len(words):
            break
        i = max(i + 1, j - max(1, int((j - i) * overlap)))
    out = []
    for n, (a, b) in enumerate(spans):
        s, e = words[a][0], words[b - 1][1]
        own_s = 0.0 if n == 0 else (s + words[spans[n - 1][1] - 1][1]) / 2
        own_e = float(len(text)) if n == len(spans) - 1 else (e + words[spans[n + 1][0]][0]) / 2
        out.append(Window(s, e, own_s, own_e))
    return out


_WORD = re.compile(r"\S+")


def _merge(text: str, parts: list[tuple[Window, dict[str, Any]]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"entities": []}
    index: dict[tuple[int, int, str], int] = {}
    pending: list[tuple[tuple[int, int, str], tuple[int, int, str], dict[str, Any]]] = []
    has_rel = any("relations" in p for _, p in parts)
    for w, pred in parts:
        ents = pred.get("entities", [])
        keys = []
        for ent in ents:
            s, e = ent["start"] + w.start, ent["end"] + w.start
            key = (s, e, ent["label"])
            keys.append(key)
            mid = (s + e) / 2
            if w.own_start <= mid < w.own_end and key not in index:
                index[key] = len(merged["entities"])
                merged["entities"].append({**ent, "start": s, "end": e, "text": text[s:e]})
        for rel in pred.get("relations", []):
            pending.append((keys[rel["head"]], keys[rel["tail"]], rel))
    merged["entities"].sort(key=lambda x: (x["start"], x["end"], x["label"]))
    order = {(x["start"], x["end"], x["label"]): i for i, x in enumerate(merged["entities"])}
    if has_rel:
        seen = set()
        rels = []
        for h, t, rel in pending:
            if h in order and t in order and (order[h], order[t], rel["type"]) not in seen:
                seen.add((order[h], order[t], rel["type"]))
                rels.append({**rel, "head": order[h], "tail": order[t]})
        merged["relations"] = rels
    return merged


def extract(
    model: LoadedBase | nn.Module,
    spec: TaskSpec,
    inputs: Sequence[str | Mapping[str, Any]],
    tokenizer: Any = None,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """Predict structures for raw texts or task inputs; long texts are windowed, never cut.

    ``model`` is a :class:`LoadedBase` (e.g. from ``apply_delta`` or ``SharedBase.use``), or
    a bare transformers model together with its ``tokenizer``.
    """
    run = model if isinstance(model, LoadedBase) else _wrap(model, tokenizer)
    task = get_task(spec.type)
    items = [task.input_from_text(x) if isinstance(x, str) else dict(x) for x in inputs]
    key = task.text_key
    if key is None:
        for inp in items:
            src = task.source(inp, spec)
            if len(run.source_ids(src)) > run.max_source_tokens:
                raise ValueError(
                    f"input of {len(src)} characters exceeds the model's window and this task cannot be split"
                )
        return predict(run, spec, items, batch_size, max_new_tokens)
    plan = [(n, w) for n, inp in enumerate(items) for w in windows(run, inp[key])]
    flat = [{**items[n], key: items[n][key][w.start : w.end]} for n, w in plan]
    preds = predict(run, spec, flat, batch_size, max_new_tokens)
    grouped: dict[int, list[tuple[Window, dict[str, Any]]]] = {}
    for (n, w), p in zip(plan, preds, strict=False):
        grouped.setdefault(n, []).append((w, p))
    out = []
    for n, inp in enumerate(items):
        parts = grouped[n]
        if len(parts) == 1 and parts[0][0].start == 0:
            out.append(parts[0][1])
        else:
            out.append(_merge(inp[key], parts))
    return out


def _wrap(model: nn.Module, tokenizer: Any) -> LoadedBase:
    if tokenizer is None:
        raise ValueError("a bare model needs its tokenizer")
    family: Family = "seq2seq" if getattr(model.config, "is_encoder_decoder", False) else "decoder-only"
    return LoadedBase(getattr(model.config, "name_or_path", "model"), family, model, tokenizer)


__all__ = ["extract", "generate", "predict", "sequence_logprobs", "windows"]

"""Quality study: FISH-DIP against its baselines (fish, random, full) on real data.

    python bench/quality.py run                 # lr sweep on dev, then the main runs, then the report
    python bench/quality.py report              # aggregate whatever result files exist
    python bench/quality.py run --quick         # smoke run: a few minutes on 2 CPU cores
    python bench/quality.py run --quick --base tiny-t5   # seconds; results and report stay in bench/results/
    python bench/quality.py recheck RESULT.json  # does this machine round like the run's? (4 steps)
    kill -USR1 PID                               # a running study: finish this run, start no other

Every (phase, dataset, subset, seed, arm, lr) run writes one JSON file (atomically) under the
results folder; a rerun skips finished files, so the study can be spread over several sittings.
The learning rate of each (dataset, subset, arm) is picked on the DEV subset (never test) from
a sweep on one seed, at the sweep subset nearest to the main subset (--sweep-fractions: by
default one sweep at 1% sets the rate of every fraction; a grid whose best rate sits at its
edge is widened past it, --sweep-widen); the main runs then score the test split. Every arm
of a (dataset, subset, seed) gets the same training sentences, steps, batch size and evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import logging
import math
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import core  # noqa: E402
from core.data import conll04_labels, read_conll, read_conll04, wnut17_labels  # noqa: E402
from core.extraction import predict  # noqa: E402
from core.hardware import cpu_flags, cpu_model, flush_denormals, native_bf16  # noqa: E402
from core.training import BF16_AUTO_MIN_PARAMETERS  # noqa: E402

log = logging.getLogger("quality")

DATA_DIR = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
DEFAULT_BASE = "gemma-3-270m"
ARMS = ("fish_dip", "fish", "random", "full")  # the four, the default
# Arms for questions the four raise, by name (--arms): a method with training settings changed.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # fish_dip with AdamW bias-correcting each entry by its own steps in the mask, so entries
    # new to a refreshed mask move as under a fresh Adam (core's default counts the run's steps)
    "fish_dip_entry": ("fish_dip", {"bias_correction": "per_entry"}),
}
ALL_ARMS = ARMS + tuple(VARIANTS)
SAMPLE_SEED = 0  # fixes the dev (and any test) subset: the same sentences for every run
LOSS_POINTS = 100  # train-loss curve: windowed means, at most this many points
FORMAT = 1
NO_EARLY_STOP = 10**7  # core's largest patience: more steps than any run has


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Study:
    base: str
    datasets: tuple[str, ...]
    fractions: tuple[float, ...]
    train_size: int | None  # a fixed number of sentences instead of fractions (quick mode)
    seeds: tuple[int, ...]
    arms: tuple[str, ...]
    steps: int | None  # None: core's auto (about 300)
    batch_size: int
    refresh_every: int
    sparsity: float
    # bf16 autocast by dataset: every run of one dataset shares it (checked against each file's
    # config); datasets may differ, since no comparison crosses datasets
    bf16: tuple[tuple[str, bool], ...]
    dev_size: int
    evals: int  # dev evaluations per run (the last at the final step)
    test_size: int | None  # None: the full test split
    eval_batch_size: int
    sparse_lrs: tuple[float, ...]
    full_lrs: tuple[float, ...]
    sweep: bool
    fixed_lrs: tuple[tuple[str, float], ...]  # (arm, lr) set by hand: no sweep for those arms
    sweep_fractions: tuple[float, ...]
    sweep_widen: int  # rates to add past a grid edge whose rate scored best, per side
    sweep_seed: int
    device: str
    quick: bool
    data_dir: Path
    results_dir: Path
    report_path: Path
    img_dir: Path
    img_prefix: str
    command: str = ""

    def subsets(self) -> list[str]:
        if self.train_size is not None:
            return [f"n{self.train_size}"]
        return [f"f{x:g}" for x in self.fractions]

    def sweep_subset(self, subset: str) -> str:
        """The sweep subset whose picked rates the main runs on ``subset`` use: the nearest
        fraction on a log scale (a tie goes to the smaller)."""
        if self.train_size is not None:
            return f"n{self.train_size}"
        x = float(subset[1:])
        nearest = min(sorted(self.sweep_fractions), key=lambda f: abs(math.log(f / x)))
        return f"f{nearest:g}"

    def sweep_plan(self) -> dict[str, list[str]]:
        """Sweep subset -> the main subsets whose rates it picks, in the order of the main subsets."""
        plan: dict[str, list[str]] = {}
        for subset in self.subsets():
            plan.setdefault(self.sweep_subset(subset), []).append(subset)
        return plan

    def fixed_lr(self, arm: str) -> float | None:
        return dict(self.fixed_lrs).get(arm)

    def bf16_for(self, dataset: str) -> bool:
        return dict(self.bf16)[dataset]

    def grid(self, arm: str) -> tuple[float, ...]:
        return self.full_lrs if arm == "full" else self.sparse_lrs

    def comparable(self) -> dict[str, Any]:
        """Settings that every result file in one results folder must share."""
        keys = ("base", "steps", "batch_size", "refresh_every", "sparsity", "dev_size", "test_size")
        return {k: getattr(self, k) for k in keys} | {"optimizer": "adamw", "format": FORMAT}


@dataclass(frozen=True)
class RunKey:
    phase: str  # "sweep" (dev score only) | "main" (dev curve and test score)
    dataset: str
    subset: str  # "f0.01" = 1% of train, "n8" = 8 sentences
    seed: int
    arm: str
    lr: float

    def filename(self) -> str:
        return f"{self.phase}__{self.dataset}__{self.subset}__seed{self.seed}__{self.arm}__lr{self.lr:g}.json"


def subset_label(subset: str) -> str:
    if subset.startswith("f"):
        return f"{float(subset[1:]) * 100:g}%"
    return f"{subset[1:]} sent."


def subset_count(subset: str, n: int) -> int:
    if subset.startswith("f"):
        return max(1, min(n, round(float(subset[1:]) * n)))
    return max(1, min(n, int(subset[1:])))


def subset_ids(subset: str, n: int, seed: int) -> list[int]:
    """The training sentences of a run: drawn by the seed, so every arm of a seed shares them."""
    return sorted(random.Random(seed).sample(range(n), subset_count(subset, n)))


def fixed_sample(items: Sequence[dict[str, Any]], size: int | None) -> list[dict[str, Any]]:
    if size is None or size >= len(items):
        return list(items)
    return [items[i] for i in sorted(random.Random(SAMPLE_SEED).sample(range(len(items)), size))]


def default_bf16(base: str) -> bool:
    """The study's precision unless --bf16 says otherwise: bf16 autocast for real-size bases,
    on every machine, so that runs made on different machines stay comparable."""
    info = {b.name: b for b in core.list_bases()}.get(base)
    return bool(info and info.parameters and info.parameters > BF16_AUTO_MIN_PARAMETERS)


def arm_method(arm: str) -> tuple[str, dict[str, Any]]:
    """The core method an arm trains with, and the training settings it changes."""
    return VARIANTS.get(arm, (arm, {}))


def auto_lr(arm: str) -> float:
    """core's default AdamW rate for the arm, used when there is no sweep (quick mode)."""
    method = core.MethodConfig(type=arm_method(arm)[0])  # type: ignore[arg-type]
    return float(core.resolve_config(core.TrainConfig(optimizer="adamw"), method, 1).learning_rate or 0.0)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DatasetInfo:
    task: str
    files: tuple[str, str, str]  # train, dev, test relative to the data folder
    reader: Callable[[Path], list[dict[str, Any]]]
    spec: Callable[[], dict[str, Any]]
    metrics: tuple[tuple[str, str], ...]  # (summary key, column title)


def _conll04_spec() -> dict[str, Any]:
    entities, relations = conll04_labels()
    return {"type": "joint_er", "labels": entities, "relation_labels": relations}


DATASETS: dict[str, DatasetInfo] = {
    "wnut17": DatasetInfo(
        "ner",
        ("wnut17/wnut17train.conll", "wnut17/emerging.dev.conll", "wnut17/emerging.test.annotated"),
        read_conll,
        lambda: {"type": "ner", "labels": wnut17_labels()},
        (("entity_f1", "entity F1"),),
    ),
    "conll04": DatasetInfo(
        "joint_er",
        ("conll04/conll04_train.json", "conll04/conll04_dev.json", "conll04/conll04_test.json"),
        read_conll04,
        _conll04_spec,
        (("entity_f1", "entity F1"), ("relation_f1", "relation F1 (strict)")),
    ),
}


@dataclass
class Data:
    name: str
    spec: core.TaskSpec
    train: list[dict[str, Any]]
    dev: list[dict[str, Any]]  # the fixed dev subset
    test: list[dict[str, Any]]  # the full test split unless test_size is set


def read_split(info: DatasetInfo, spec: core.TaskSpec, data_dir: Path, rel: str) -> list[dict[str, Any]]:
    res = core.get_task(spec.type).validate(spec, info.reader(data_dir / rel))
    if res.problems:
        raise SystemExit(f"{rel}: {len(res.problems)} invalid examples, first: {res.problems[0]}")
    return res.examples


def load_data(name: str, study: Study) -> Data:
    info = DATASETS[name]
    spec = core.TaskSpec.from_dict(info.spec())
    train, dev, test = (read_split(info, spec, study.data_dir, rel) for rel in info.files)
    return Data(name, spec, train, fixed_sample(dev, study.dev_size), fixed_sample(test, study.test_size))


def summarize(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers the study reports from a task metric dict (ner or joint_er)."""
    if "entity" in metrics:
        return {
            "score": float(metrics["score"]),
            "entity_f1": float(metrics["entity"]["f1"]),
            "relation_f1": float(metrics["relation"]["f1"]),
        }
    return {"score": float(metrics["score"]), "entity_f1": float(metrics["f1"])}


# --------------------------------------------------------------------------- one run


class Recorder(core.Callbacks):
    """Collects curves and timings from core.fit's callbacks and logs progress."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total = name, total
        self.losses: list[tuple[int, float]] = []
        self.dev_curve: list[dict[str, Any]] = []
        self.refreshes: list[dict[str, Any]] = []
        self.step_s: list[float] = []
        self.dev_eval_s = 0.0
        self.refresh_s = 0.0
        self.start = self.mark = time.perf_counter()

    def on_step(self, info: core.StepInfo) -> None:
        now = time.perf_counter()
        if info.step > 1:  # step 1 also holds the model copy and optimizer set-up
            self.step_s.append(now - self.mark)
        self.mark = now
        self.losses.append((info.step, info.loss))
        every = max(1, self.total // 10)
        if info.step % every == 0 or info.step == self.total:
            log.info(
                "%s: step %d/%d loss %.4f (%.0f s)",
                self.name,
                info.step,
                self.total,
                info.loss,
                now - self.start,
            )

    def on_evaluation(self, info: core.EvalInfo) -> None:
        now = time.perf_counter()
        self.dev_eval_s += now - self.mark
        self.mark = now
        point = {"step": info.step, **summarize(info.metrics)}
        self.dev_curve.append(point)
        log.info("%s: dev at step %d: %s", self.name, info.step, _fmt_scores(point))

    def on_mask_refresh(self, info: core.MaskRefreshInfo) -> None:
        self.mark = time.perf_counter()
        self.refresh_s += info.seconds
        self.refreshes.append(
            {
                "step": info.step,
                "selected": info.selected,
                "total_parameters": info.total_parameters,
                "overlap": info.overlap,
                "touched": info.touched,
                "per_module_share": info.per_module_share,
                "example_ids": info.example_ids,
                "seconds": round(info.seconds, 3),
            }
        )

    def loss_curve(self) -> list[list[float]]:
        return windowed_means(self.losses, max(1, math.ceil(len(self.losses) / LOSS_POINTS)))


def windowed_means(losses: Sequence[tuple[int, float]], width: int) -> list[list[float]]:
    """The training loss as a result file stores it: [last step of the window, mean loss]."""
    out: list[list[float]] = []
    for i in range(0, len(losses), width):
        window = losses[i : i + width]
        out.append([window[-1][0], round(statistics.fmean(v for _, v in window), 6)])
    return out


def _fmt_scores(point: Mapping[str, Any]) -> str:
    names = {"entity_f1": "entity F1", "relation_f1": "relation F1"}
    return ", ".join(f"{title} {100 * float(point[k]):.1f}" for k, title in names.items() if k in point)


def study_steps(study: Study, n_train: int) -> int:
    """One step count for every arm of a (dataset, subset): --steps, else core's auto."""
    if study.steps is not None:
        return study.steps
    cfg = core.resolve_config(core.TrainConfig(batch_size=study.batch_size), core.MethodConfig(), n_train)
    return int(cfg.total_steps or 0)


def score_test(base: core.LoadedBase, result: core.FitResult, data: Data, batch_size: int) -> dict[str, Any]:
    """The task's metric on the test examples, as core.evaluate computes it, at our batch size."""
    task = core.get_task(data.spec.type)
    run = base.bind(result.model)
    run.model.eval()
    preds = predict(run, data.spec, data.test, batch_size=batch_size)
    return task.metric(data.spec, [task.gold(ex) for ex in data.test], preds)


def execute(key: RunKey, study: Study, data: Data, base: core.LoadedBase) -> dict[str, Any]:
    ids = subset_ids(key.subset, len(data.train), key.seed)
    train = [data.train[i] for i in ids]
    steps = study_steps(study, len(train))
    method_type, settings = arm_method(key.arm)
    method = core.MethodConfig(type=method_type, sparsity=study.sparsity, refresh_every=study.refresh_every)  # type: ignore[arg-type]
    cfg = core.TrainConfig(
        **settings,
        max_steps=steps,
        batch_size=study.batch_size,
        learning_rate=key.lr,
        optimizer="adamw",
        bf16=study.bf16_for(key.dataset),  # the study's, on every machine: core's auto depends on the CPU
        seed=key.seed,
        eval_every=max(1, steps // study.evals),
        # A fixed budget: every arm runs every step. core's default early stop (loss under
        # 1e-6 for 20 steps) would end the arms that fit the few sentences fastest earlier.
        early_stop_patience=NO_EARLY_STOP,
    )
    name = key.filename().removesuffix(".json")
    log.info("%s: start (%d training sentences, %d steps)", name, len(train), steps)
    rec = Recorder(name, steps)
    t0, c0 = time.perf_counter(), time.process_time()
    result = core.fit(
        base, data.spec, train, validation_examples=data.dev, method=method, config=cfg, callbacks=rec
    )
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    test: dict[str, Any] | None = None
    test_s = test_cpu_s = 0.0
    if key.phase == "main":
        t1, c1 = time.perf_counter(), time.process_time()
        test = score_test(base, result, data, study.eval_batch_size)
        test_s, test_cpu_s = time.perf_counter() - t1, time.process_time() - c1
        log.info("%s: test %s (%.0f s)", name, _fmt_scores(summarize(test)), test_s)
    out = {
        "format": FORMAT,
        "status": "done",
        "key": asdict(key),
        "study": study.comparable(),
        "n_train": len(train),
        "train_ids": ids,
        "n_dev": len(data.dev),
        "n_test": len(data.test),
        "steps": steps,
        "steps_run": result.steps,
        "stopped": result.stopped,
        "config": result.config.to_dict(),
        "method": result.method.to_dict(),
        "train_loss": result.train_loss,
        "loss_curve": rec.loss_curve(),
        "dev_curve": rec.dev_curve,
        "dev_final": rec.dev_curve[-1] if rec.dev_curve else None,
        "mask_refreshes": rec.refreshes,
        "test": summarize(test) if test is not None else None,
        "test_metrics": test,
        "timing": {
            "fit_s": round(fit_s, 3),
            "dev_eval_s": round(rec.dev_eval_s, 3),
            "mask_refresh_s": round(rec.refresh_s, 3),
            "train_s": round(sum(rec.step_s), 3),
            "step_s_median": round(statistics.median(rec.step_s), 4) if rec.step_s else None,
            "test_eval_s": round(test_s, 3),
            # CPU seconds of this process, all threads: unlike wall time, not inflated by other
            # work on the machine or by a pause (SIGSTOP) of the study.
            "fit_cpu_s": round(fit_cpu_s, 3),
            "test_eval_cpu_s": round(test_cpu_s, 3),
        },
        "environment": environment(base),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    del result
    gc.collect()
    return out


def environment(base: core.LoadedBase) -> dict[str, Any]:
    import torch

    dev = base.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
    return {
        "device": str(dev),
        "device_name": name,
        # Kernels, and so the rounding of every step, depend on the CPU's vector units: a run
        # repeated on another CPU model need not give the same numbers.
        "cpu_isa": cpu_isa(),
        # Subnormal floats read and written as zero (core's default since 2026-12-05; runs
        # before it lack the field and kept them): the same numbers to rounding, faster steps.
        "flush_denormals": flush_denormals(),
        "base_fingerprint": base.fingerprint,  # sha256 of the base's weights, as loaded
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "core": core.__version__,
        "code": code_version(),
        "python": platform.python_version(),
    }


@functools.cache
def code_version() -> str | None:
    """The git commit of this checkout, with ``+dirty`` where the training code or this harness
    differ from it; None outside a git checkout. Cached on the first call, which ``run_study``
    makes before any run: the code a long study runs is the code it imported at its start, not
    what the checkout holds hours later."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout

    try:
        head = git("rev-parse", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", "core", "bench/quality.py").strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def cpu_isa() -> str:
    """torch's CPU capability (the widest vector unit its kernels use) and the bf16/AMX flags."""
    import torch

    extra = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile"})
    return " ".join([torch.backends.cpu.get_cpu_capability(), *extra])


# --------------------------------------------------------------------------- result files


def write_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write to a temp file in the same folder, then rename: a killed run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1)
            handle.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_result(study: Study, key: RunKey) -> dict[str, Any] | None:
    path = study.results_dir / key.filename()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("status") == "done" else None


def check_comparable(study: Study, key: RunKey, found: Mapping[str, Any]) -> None:
    """Refuse to mix runs made with other settings into one study folder."""
    mine = study.comparable()
    theirs = found.get("study") or {}
    diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
    # Not among the settings above, which files made before it was a study setting lack; their
    # config holds the precision they trained in.
    trained_bf16, bf16 = (found.get("config") or {}).get("bf16"), study.bf16_for(key.dataset)
    if trained_bf16 != bf16:
        diff["bf16"] = (trained_bf16, bf16)
    if diff:
        raise SystemExit(
            f"{study.results_dir / key.filename()} was made with other settings "
            f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}); "
            "use another --results-dir for this study"
        )


# --------------------------------------------------------------------------- planning


def nice_rate(x: float) -> float:
    """The nearest (on a log scale) of 1, 2, 3 and 5 times a power of ten."""
    e = math.floor(math.log10(x))
    candidates = [m * 10.0**k for k in (e - 1, e, e + 1) for m in (1, 2, 3, 5)]
    return float(f"{min(candidates, key=lambda c: abs(math.log(c / x))):.0e}")


def widened_rate(grid: Sequence[float], side: int, k: int) -> float:
    """The k-th rate past the low (side -1) or high (side +1) edge of ``grid``, spaced by the
    grid's mean ratio between neighbours: past 1e-4..3e-3, 3e-5 then 1e-5 below, 1e-2 above."""
    lo, hi = min(grid), max(grid)
    ratio = (hi / lo) ** (1 / (len(grid) - 1))
    return nice_rate((lo if side < 0 else hi) * ratio ** (side * k))


def arm_sweep(
    study: Study, dataset: str, arm: str, sweep_subset: str
) -> tuple[list[float], list[dict[str, Any]]]:
    """(the arm's grid on this sweep subset, its finished points), both by rate.

    The grid is the given one, widened while its complete sweep scores best at an edge, strictly
    above the rate next to it: one more rate past that edge, at most ``sweep_widen`` per side.
    So a rate that wins only because the grid stops there is checked against its outer
    neighbour, whichever the arm. A tie at the edge (every rate at 0, say) widens nothing: the
    scores do not point past it."""
    grid = sorted(study.grid(arm))
    widened = {-1: 0, 1: 0}
    loaded: dict[float, dict[str, Any] | None] = {}  # each point read once, however far the grid widens
    while True:
        for lr in grid:
            if lr not in loaded:
                key = RunKey("sweep", dataset, sweep_subset, study.sweep_seed, arm, lr)
                found = load_sweep_point(study, key)
                ok = found is not None and found.get("dev_final")
                source = "main run" if ok and (found.get("key") or {}).get("phase") == "main" else "sweep"
                loaded[lr] = {"lr": lr, **found["dev_final"], "source": source} if ok else None
        points = [p for p in (loaded[lr] for lr in grid) if p is not None]
        if len(points) < len(grid) or len(grid) < 2:
            return grid, points
        best = best_point(points)["lr"]
        side = -1 if best == grid[0] else 1 if best == grid[-1] else 0
        if side == 0 or widened[side] >= study.sweep_widen:
            return grid, points
        edge, inner = (points[0], points[1]) if side < 0 else (points[-1], points[-2])
        if _rank(edge) == _rank(inner):
            return grid, points
        widened[side] += 1
        lr = widened_rate(study.grid(arm), side, widened[side])
        grid = [lr, *grid] if side < 0 else [*grid, lr]


def best_point(points: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """Best dev score; ties (common at 1% data, where relation F1 is often 0) break on entity
    F1, then on the smaller learning rate."""
    return max(points, key=lambda p: (*_rank(p), -p["lr"]))


def _rank(point: Mapping[str, Any]) -> tuple[float, float]:
    return point["score"], point["entity_f1"]


def picked_lr(grid: Sequence[float], points: Sequence[Mapping[str, Any]]) -> float | None:
    """The best point's rate once every rate of ``grid`` has a point, else None."""
    return float(best_point(points)["lr"]) if len(points) == len(grid) else None


def sweep_keys(study: Study, dataset: str) -> list[RunKey]:
    """Every sweep point known so far (a widened grid adds points as results come in), the
    sweep subsets in the order of the main subsets that use them."""
    if not study.sweep:
        return []
    return [
        RunKey("sweep", dataset, subset, study.sweep_seed, arm, lr)
        for subset in study.sweep_plan()
        for arm in study.arms
        if study.fixed_lr(arm) is None
        for lr in arm_sweep(study, dataset, arm, subset)[0]
    ]


def load_sweep_point(study: Study, key: RunKey) -> dict[str, Any] | None:
    """A sweep point's result: its own file, or else the main run with the same (subset, seed,
    arm, lr). A main run is the sweep run's computation (the same sentences, steps and dev
    evaluations) plus a test score, so the sweep reads its dev score instead of training again.
    The test score is never read here."""
    return load_result(study, key) or load_result(study, replace(key, phase="main"))


def pick_lr(study: Study, dataset: str, arm: str, subset: str) -> tuple[float | None, list[dict[str, Any]]]:
    """(best lr by dev score, every finished sweep point) for the main runs on ``subset``; None
    until the arm's sweep there, widened grid included, is complete."""
    fixed = study.fixed_lr(arm)
    if fixed is not None:
        return fixed, []
    if not study.sweep:
        return auto_lr(arm), []
    grid, points = arm_sweep(study, dataset, arm, study.sweep_subset(subset))
    return picked_lr(grid, points), points


def main_keys(study: Study, dataset: str) -> list[RunKey]:
    """Main runs in the order (subset, seed, arm), subsets as given: every arm of a
    seed before the next seed, so that a study stopped part-way leaves complete pairs."""
    keys = []
    for s in study.subsets():
        picked = {arm: pick_lr(study, dataset, arm, s)[0] for arm in study.arms}
        keys += [
            RunKey("main", dataset, s, seed, arm, lr)
            for seed in study.seeds
            for arm, lr in picked.items()
            if lr is not None
        ]
    return keys


@dataclass
class Tally:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # not started: a stop was asked for


# Set by SIGUSR1 during `run` (see main): the run in progress finishes and is written, no other
# starts, and the report is written as usual; what is left runs at the next start.
STOP = threading.Event()


def run_keys(
    study: Study, keys: Iterable[RunKey], data: Data, base_of: Callable[[], core.LoadedBase], tally: Tally
) -> None:
    for key in keys:
        found = load_sweep_point(study, key) if key.phase == "sweep" else load_result(study, key)
        if found is not None:
            check_comparable(study, key, found)
            log.info("skip (done): %s", key.filename())
            tally.skipped.append(key.filename())
            continue
        if STOP.is_set():
            tally.deferred.append(key.filename())
            continue
        result = execute(key, study, data, base_of())
        write_atomic(study.results_dir / key.filename(), result)
        log.info("wrote %s (fit %.0f s)", key.filename(), result["timing"]["fit_s"])
        tally.ran.append(key.filename())


def run_study(study: Study) -> Tally:
    """Run every missing result of the study: per dataset the sweep first, then the main runs."""
    tally = Tally()
    code_version()  # fixed now, see its docstring
    loaded: list[core.LoadedBase] = []

    def base_of() -> core.LoadedBase:  # load lazily: a rerun with nothing to do stays fast
        if not loaded:
            t0 = time.perf_counter()
            loaded.append(core.load_base(study.base, device=study.device))
            log.info("loaded base %s in %.0f s", study.base, time.perf_counter() - t0)
            if any(on for _, on in study.bf16) and not native_bf16(loaded[0].device):
                log.warning(
                    "this %s has no bf16 instructions: bf16 autocast is emulated here, and a gemma "
                    "step took 36x as long as in fp32 on such a CPU (docs/BENCHMARKS.md). --bf16 off, or "
                    "DATASET=off for a dataset with no bf16 runs yet, trains in fp32",
                    "CPU" if loaded[0].device.type == "cpu" else "device",
                )
        return loaded[0]

    for dataset in study.datasets:
        data = load_data(dataset, study)
        log.info(
            "%s: %d train / %d dev (subset) / %d test sentences",
            dataset,
            len(data.train),
            len(data.dev),
            len(data.test),
        )
        seen: set[RunKey] = set()
        # A finished sweep can widen its grid: go on until no new point appears.
        while new := [k for k in sweep_keys(study, dataset) if k not in seen]:
            seen.update(new)
            run_keys(study, new, data, base_of, tally)
        for subset in study.subsets() if study.sweep else []:
            for arm in study.arms:
                lr, points = pick_lr(study, dataset, arm, subset)
                log.info(
                    "%s %s %s: picked lr %s from %s",
                    dataset,
                    subset,
                    arm,
                    lr,
                    {p["lr"]: round(p["score"], 4) for p in points},
                )
        run_keys(study, main_keys(study, dataset), data, base_of, tally)
    log.info("ran %d, skipped %d finished runs", len(tally.ran), len(tally.skipped))
    if tally.deferred:
        log.info("stopped on request: %d runs not started, left for the next start", len(tally.deferred))
    return tally


# --------------------------------------------------------------------------- recheck


def recheck(path: Path, steps: int, data_dir: Path, load: Callable[[str], core.LoadedBase]) -> bool:
    """Repeat the first ``steps`` training steps of a stored run on this machine and compare the
    training loss with the run's stored curve (windowed means, 6 digits). Machines that give the
    same loss round alike; ones that do not can turn the difference into points of F1 by the
    end of a run (docs/BENCHMARKS.md, "A sweep point that did not repeat"), so a run's pairs
    should not mix them. Prints the comparison; returns whether every window matched."""
    stored = json.loads(path.read_text())
    key = RunKey(**stored["key"])
    info = DATASETS[key.dataset]
    spec = core.TaskSpec.from_dict(info.spec())
    pool = read_split(info, spec, data_dir, info.files[0])
    train = [pool[i] for i in stored["train_ids"]]
    curve = [(int(s), float(v)) for s, v in stored["loss_curve"]]
    width = curve[0][0]  # the first window ends at step `width`
    windows = [w for w in curve if w[0] <= max(steps, width)]
    last = windows[-1][0]
    config = {k: v for k, v in stored["config"].items() if k != "total_steps"}  # derived; refused
    losses: list[tuple[int, float]] = []

    class Losses(core.Callbacks):
        def on_step(self, info: core.StepInfo) -> None:
            losses.append((info.step, info.loss))

    with contextlib.suppress(core.FitCancelled):  # stopped after the last compared step, as asked
        core.fit(
            load(stored["study"]["base"]),
            spec,
            train,
            method=core.MethodConfig.from_dict(stored["method"]),
            config=core.TrainConfig.from_dict(config),
            callbacks=Losses(),
            should_stop=lambda: len(losses) >= last,
        )
    env = stored.get("environment", {})
    print(
        f"{path.name}: made on {env.get('device_name', 'an unrecorded CPU')} "
        f"({env.get('cpu_isa', 'ISA not recorded')}); here {cpu_model()} ({cpu_isa()})"
    )
    same = True
    for (end, value), (_, mine) in zip(windows, windowed_means(losses, width), strict=True):
        same &= mine == value
        flag = "" if mine == value else "  DIFFERS"
        print(f"  steps {end - width + 1}-{end}: stored {value:.6f}, here {mine:.6f}{flag}")
    verdict = "same: this machine rounds like" if same else "differs: this machine rounds unlike"
    print(f"  {verdict} the run's")
    return same


# --------------------------------------------------------------------------- report: numbers


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def mean_std(values: Sequence[float], expected: int, signed: bool = False) -> str:
    """Mean ± sd over seeds in %, or n/a until every expected seed is there; ``signed`` for
    differences (+1.2)."""
    if len(values) < expected or not values:
        return f"n/a ({len(values)} of {expected} seeds)"
    mean = f"{100 * statistics.fmean(values):{'+' if signed else ''}.1f}"
    return mean if len(values) == 1 else f"{mean} ± {_pct(statistics.stdev(values))}"


@dataclass
class Cell:
    """The finished main runs of one (dataset, subset, arm) at its picked lr."""

    dataset: str
    subset: str
    arm: str
    lr: float | None
    runs: dict[int, dict[str, Any]]  # seed -> result

    def values(self, metric: str) -> list[float]:
        return [float(r["test"][metric]) for r in self.runs.values() if r.get("test")]

    def machines(self) -> str:
        """The machines the runs ran on, with their run counts: "AMD EPYC (2); x86_64 (1)"."""
        names = Counter(r["environment"]["device_name"] for r in self.runs.values())
        return "; ".join(f"{name} ({n})" for name, n in sorted(names.items()))

    def timing(self, key: str) -> float | None:
        vals = [float(r["timing"][key]) for r in self.runs.values() if r["timing"].get(key) is not None]
        return statistics.fmean(vals) if vals else None


def collect(study: Study) -> dict[tuple[str, str, str], Cell]:
    cells: dict[tuple[str, str, str], Cell] = {}
    for dataset in study.datasets:
        for arm in study.arms:
            for subset in study.subsets():
                lr, _ = pick_lr(study, dataset, arm, subset)
                runs: dict[int, dict[str, Any]] = {}
                for seed in study.seeds:
                    found = (
                        None
                        if lr is None
                        else load_result(study, RunKey("main", dataset, subset, seed, arm, lr))
                    )
                    if found is not None:
                        runs[seed] = found
                cells[(dataset, subset, arm)] = Cell(dataset, subset, arm, lr, runs)
    return cells


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def scores_section(study: Study, cells: Mapping[tuple[str, str, str], Cell]) -> list[str]:
    rows = []
    for (dataset, subset, arm), cell in cells.items():
        lr = "sweep incomplete" if cell.lr is None else f"{cell.lr:g}"
        tests = [(cell.runs.get(seed) or {}).get("test") for seed in study.seeds]
        for metric, title in DATASETS[dataset].metrics:
            per_seed = ["n/a" if t is None else _pct(float(t[metric])) for t in tests]
            mean = mean_std(cell.values(metric), len(study.seeds))
            rows.append([dataset, subset_label(subset), arm, lr, title, *per_seed, mean])
    lines = [
        "## Test scores",
        "",
        f"Per seed, and mean ± standard deviation over seeds, in % (test split: "
        f"{'full' if study.test_size is None else f'{study.test_size} sentences'}).",
        "",
    ]
    header = ["dataset", "train", "arm", "lr", "metric", *[f"seed {s}" for s in study.seeds], "mean ± sd"]
    return lines + table(header, rows) + [""]


def paired_section(study: Study, cells: Mapping[tuple[str, str, str], Cell]) -> list[str]:
    against_full = {arm: "full" for arm in study.arms if arm != "full"}
    # A variant changes one setting of its parent arm: its own effect is the paired difference
    # with that arm, on the same seeds, rate and steps.
    against_parent = {arm: VARIANTS[arm][0] for arm in study.arms if arm in VARIANTS}
    return _paired_table(
        study,
        cells,
        against_full,
        "## Paired differences against full fine-tuning",
        "Test score of the arm minus that of `full` on the same seed (same training sentences), in points.",
    ) + _paired_table(
        study,
        cells,
        against_parent,
        "## Variants against the arm they change",
        "Test score of the variant minus that of the arm it changes one setting of, on the same seed "
        "(same training sentences), in points.",
    )


def _paired_table(
    study: Study,
    cells: Mapping[tuple[str, str, str], Cell],
    reference: Mapping[str, str],
    heading: str,
    caption: str,
) -> list[str]:
    rows = []
    for (dataset, subset, arm), cell in cells.items():
        ref = cells.get((dataset, subset, reference.get(arm, "")))
        if ref is None:
            continue
        for metric, title in DATASETS[dataset].metrics:
            diffs: list[str] = []
            values: list[float] = []
            for seed in study.seeds:
                a, b = cell.runs.get(seed), ref.runs.get(seed)
                if a and b and a.get("test") and b.get("test"):
                    values.append(float(a["test"][metric]) - float(b["test"][metric]))
                    diffs.append(f"{100 * values[-1]:+.1f}")
                else:
                    diffs.append("n/a")
            mean = mean_std(values, len(study.seeds), signed=True)
            complete = len(values) == len(study.seeds)
            ahead = f"{sum(v > 0 for v in values)} of {len(values)}" if complete else "n/a"
            rows.append([dataset, subset_label(subset), arm, ref.arm, title, *diffs, mean, ahead])
    if not rows:
        return []
    seeds = [f"seed {s}" for s in study.seeds]
    header = ["dataset", "train", "arm", "against", "metric", *seeds, "mean ± sd", "arm ahead on (seeds)"]
    return [heading, "", caption, "", *table(header, rows), ""]


def sweep_section(study: Study) -> list[str]:
    fixed = [f"{arm} {lr:g}" for arm, lr in study.fixed_lrs]
    by_hand = [f"Rates set by hand (--fixed-lrs), not swept: {', '.join(fixed)}.", ""] if fixed else []
    swept = [arm for arm in study.arms if study.fixed_lr(arm) is None]
    if not study.sweep or not swept:
        lrs = ", ".join(f"{arm} {auto_lr(arm):g}" for arm in swept)
        default = [f"No sweep; fixed AdamW rates (core's defaults): {lrs}.", ""] if swept else []
        return ["## Learning rates", "", *by_hand, *default]
    rows = []
    for dataset in study.datasets:
        for sweep_subset, mains in study.sweep_plan().items():
            for arm in swept:
                grid, points = arm_sweep(study, dataset, arm, sweep_subset)
                best = picked_lr(grid, points)
                by_lr = {p["lr"]: p for p in points}
                for lr in grid:
                    p = by_lr.get(lr)
                    dev = "not run" if p is None else _fmt_scores(p)
                    if p is not None and p["source"] != "sweep":
                        dev += f" ({p['source']})"
                    rate = f"{lr:g}" + ("" if lr in study.grid(arm) else " (widened)")
                    picked = "for " + ", ".join(map(subset_label, mains)) if best == lr else ""
                    rows.append([dataset, subset_label(sweep_subset), arm, rate, dev, picked])
    lines = [
        "## Learning-rate sweep (dev)",
        "",
        f"Seed {study.sweep_seed}, scored on the fixed dev subset ({study.dev_size} sentences) at the "
        "last step; per arm, the best dev score (CoNLL04: strict relation F1, then entity F1) picks "
        "the lr of the main runs on the training subsets named. Where the main run of the sweep seed "
        "at a grid rate exists it is the same run plus a test score: the sweep reads its dev score "
        '(marked "main run") rather than train again. Where a complete sweep scored best at an edge '
        "of its grid, strictly above the rate next to it, the grid was widened by one rate past that "
        f'edge, at most {study.sweep_widen} per side (marked "widened").',
        "",
        *by_hand,
    ]
    header = ["dataset", "train", "arm", "lr", "dev (%)", "picked"]
    return lines + table(header, rows) + [""]


def timing_section(cells: Mapping[tuple[str, str, str], Cell]) -> list[str]:
    def s(x: float | None, digits: int = 0) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    rows = []
    for (dataset, subset, arm), cell in cells.items():
        if not cell.runs:
            continue
        steps = statistics.fmean(float(r["steps_run"]) for r in cell.runs.values())
        rows.append(
            [
                dataset,
                subset_label(subset),
                arm,
                f"{steps:.0f}",
                s(cell.timing("fit_s")),
                s(cell.timing("fit_cpu_s")),
                s(cell.timing("train_s")),
                s(cell.timing("step_s_median"), 3),
                s(cell.timing("mask_refresh_s"), 1),
                s(cell.timing("dev_eval_s")),
                s(cell.timing("test_eval_s")),
                s(cell.timing("test_eval_cpu_s")),
                cell.machines(),
            ]
        )
    header = [
        "dataset",
        "train",
        "arm",
        "steps",
        "fit s",
        "fit CPU s",
        "train steps s",
        "s/step (median)",
        "mask refresh s",
        "dev eval s",
        "test eval s",
        "test eval CPU s",
        "machines (runs)",
    ]
    lines = [
        "## Wall time per arm",
        "",
        "Means over finished seeds. `fit s` is the whole core.fit call "
        "(training steps, mask refreshes, dev evaluations, set-up). The `CPU s` columns are the "
        "process's CPU seconds over all its threads: wall time grows when other work shares the "
        "machine or the study is paused, CPU time much less. Runs written before CPU time was "
        "recorded count as n/a. A row whose runs ran on more than one machine averages their "
        "speeds: compare arms by rows that ran on the same one.",
        "",
    ]
    return lines + (table(header, rows) if rows else ["No finished runs."]) + [""]


def mask_section(cells: Mapping[tuple[str, str, str], Cell]) -> list[str]:
    rows = []
    for (dataset, subset, arm), cell in cells.items():
        refreshes = [r["mask_refreshes"] for r in cell.runs.values() if r["mask_refreshes"]]
        if not refreshes:
            continue
        overlaps = [m["overlap"] for rs in refreshes for m in rs if m["overlap"] is not None]
        touched = statistics.fmean(rs[-1]["touched"] for rs in refreshes)
        last = refreshes[0][-1]["per_module_share"]
        top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(last.items())[:3])
        rows.append(
            [
                dataset,
                subset_label(subset),
                arm,
                f"{statistics.fmean(len(rs) for rs in refreshes):.0f}",
                "n/a" if not overlaps else f"{100 * statistics.fmean(overlaps):.1f}",
                f"{100 * touched:.2f}",
                top,
            ]
        )
    if not rows:
        return []
    header = [
        "dataset",
        "train",
        "arm",
        "masks chosen",
        "mean overlap with previous mask %",
        "parameters ever touched %",
        "last mask by module (first seed)",
    ]
    return ["## Mask statistics", "", *table(header, rows), ""]


# --------------------------------------------------------------------------- report: plots


def _mean_by_step(
    series: Iterable[Iterable[tuple[float, float]]],
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Mean, min and max across seeds of (step, value) series, at each step."""
    by_step: dict[float, list[float]] = {}
    for points in series:
        for step, value in points:
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return (
        steps,
        [statistics.fmean(by_step[s]) for s in steps],
        [min(by_step[s]) for s in steps],
        [max(by_step[s]) for s in steps],
    )


def _plot_mean(
    ax: Any, series: list[list[tuple[float, float]]], label: str, scale: float = 1.0, stairs: bool = False
) -> None:
    if not any(series):
        return
    steps, mean, lo, hi = _mean_by_step(series)
    style = "steps-post" if stairs else "default"
    line = ax.plot(steps, [scale * v for v in mean], marker="o", markersize=3, label=label, drawstyle=style)
    if len(series) > 1:
        ax.fill_between(
            steps,
            [scale * v for v in lo],
            [scale * v for v in hi],
            alpha=0.15,
            color=line[0].get_color(),
            step="post" if stairs else None,
        )


def plot_curves(
    study: Study, cells: Mapping[tuple[str, str, str], Cell], dataset: str, subset: str
) -> Path | None:
    import matplotlib.pyplot as plt

    arms = [cells[(dataset, subset, a)] for a in study.arms if cells[(dataset, subset, a)].runs]
    if not arms:
        return None
    metrics = DATASETS[dataset].metrics
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(5 * (len(metrics) + 1), 3.8), squeeze=False)
    for cell in arms:
        runs = list(cell.runs.values())
        for ax, (metric, _) in zip(axes[0], metrics, strict=False):
            _plot_mean(ax, [[(p["step"], p[metric]) for p in r["dev_curve"]] for r in runs], cell.arm, 100)
        _plot_mean(axes[0][-1], [[(s, v) for s, v in r["loss_curve"]] for r in runs], cell.arm)
    for ax, (_, title) in zip(axes[0], metrics, strict=False):
        ax.set(title=f"dev {title} (%)", xlabel="step")
    axes[0][-1].set(title="train loss (windowed mean)", xlabel="step")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{dataset}, train {subset_label(subset)}, {study.base} (mean over seeds, band = min..max)")
    return _save(fig, study, f"dev-{dataset}-{subset}")


def plot_masks(
    study: Study, cells: Mapping[tuple[str, str, str], Cell], dataset: str, subset: str
) -> Path | None:
    import matplotlib.pyplot as plt

    arms = [
        cells[(dataset, subset, a)] for a in study.arms if a != "full" and cells[(dataset, subset, a)].runs
    ]
    if not arms:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for cell in arms:
        runs = list(cell.runs.values())
        overlap = [
            [(m["step"], m["overlap"]) for m in r["mask_refreshes"] if m["overlap"] is not None] for r in runs
        ]
        _plot_mean(left, overlap, cell.arm, 100)
        touched = [_touched_series(r) for r in runs if r["mask_refreshes"]]
        _plot_mean(right, touched, cell.arm, 100, stairs=True)
    left.set(title="overlap with the previous mask (%)", xlabel="step")
    right.set(title="parameters ever touched (%)", xlabel="step")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{dataset}, train {subset_label(subset)}: masks (mean over seeds)")
    return _save(fig, study, f"mask-{dataset}-{subset}")


def _touched_series(result: Mapping[str, Any]) -> list[tuple[float, float]]:
    """Touched share at each refresh, held to the last step (a fixed mask's share stays flat)."""
    points = [(float(m["step"]), float(m["touched"])) for m in result["mask_refreshes"]]
    if points[-1][0] < result["steps_run"]:
        points.append((float(result["steps_run"]), points[-1][1]))
    return points


def _save(fig: Any, study: Study, stem: str) -> Path:
    import matplotlib.pyplot as plt

    study.img_dir.mkdir(parents=True, exist_ok=True)
    path = study.img_dir / f"{study.img_prefix}{stem}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- report


def settings_lines(study: Study, cells: Mapping[tuple[str, str, str], Cell]) -> list[str]:
    steps = sorted(
        {
            f"{d} {subset_label(s)}: {r['steps']} (dev eval every {r['config']['eval_every']})"
            for (d, s, _), c in cells.items()
            for r in c.runs.values()
        }
    )
    train = sorted(
        {f"{d} {subset_label(s)}: {r['n_train']}" for (d, s, _), c in cells.items() for r in c.runs.values()}
    )
    envs = sorted(
        {
            f"{env['device']} ({', '.join(filter(None, [env['device_name'], env.get('cpu_isa')]))})"
            for c in cells.values()
            for env in (r["environment"] for r in c.runs.values())
        }
    )
    # environment.code: 40 hex digits, maybe "+dirty"; absent in runs made before it was recorded
    codes = Counter(
        "not recorded" if code is None else code[:12] + code[40:]
        for c in cells.values()
        for code in (r["environment"].get("code") for r in c.runs.values())
    )
    return [
        f"- base: `{study.base}`; arms: {', '.join(study.arms)}; seeds: {', '.join(map(str, study.seeds))} "
        "(the seed draws the training subset)",
        "- optimizer AdamW for every arm (sparse arms keep optimizer state only for masked entries); "
        f"batch {study.batch_size}; sparsity {study.sparsity:g}; "
        f"fish_dip refresh every {study.refresh_every} steps; " + precision_line(study),
        f"- steps per (dataset, train): {'; '.join(steps) or 'n/a'}",
        f"- training sentences: {'; '.join(train) or 'n/a'}",
        f"- dev curve: fixed dev subset of {study.dev_size} sentences",
        f"- devices: {', '.join(envs) or 'n/a'}",
        "- code (git commit of the runs): "
        + ("; ".join(f"{label} ({_count(n, 'run')})" for label, n in sorted(codes.items())) or "n/a"),
    ]


def precision_line(study: Study) -> str:
    name = {True: "bf16 autocast (on every machine)", False: "fp32"}
    kinds = {on for _, on in study.bf16}
    if len(kinds) == 1:
        return name[kinds.pop()]
    return "; ".join(f"{dataset}: {name[on]}" for dataset, on in study.bf16)


def write_report(study: Study) -> Path:
    cells = collect(study)
    title = (
        "Quality study (quick smoke run)" if study.quick else "Quality study: FISH-DIP against its baselines"
    )
    lines = [
        f"# {title}",
        "",
        f"Generated file, do not edit: written by `{study.command or 'python bench/quality.py report'}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC from the result files in "
        f"`{_rel(study.results_dir, ROOT)}`.",
        "",
    ]
    if study.quick:
        lines += [
            "Smoke mode: a handful of sentences and steps, to check the harness end to end. "
            "The scores say nothing about the method.",
            "",
        ]
    lines += [*settings_lines(study, cells), ""]
    lines += scores_section(study, cells) + paired_section(study, cells) + sweep_section(study)
    lines += timing_section(cells) + mask_section(cells)
    plots = []
    for dataset in study.datasets:
        for subset in study.subsets():
            for path in (
                plot_curves(study, cells, dataset, subset),
                plot_masks(study, cells, dataset, subset),
            ):
                if path is not None:
                    plots.append(f"![{path.stem}]({_rel(path, study.report_path.parent)})")
    if plots:
        lines += ["## Plots", ""] + [p + "\n" for p in plots]
    study.report_path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines).rstrip() + "\n"
    tmp = study.report_path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, study.report_path)
    return study.report_path


def _rel(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when both lie in the repo (links in docs/), else absolute."""
    path, start = path.resolve(), start.resolve()
    if not (path.is_relative_to(ROOT) and start.is_relative_to(ROOT)):
        return str(path)
    return os.path.relpath(path, start)


# --------------------------------------------------------------------------- command line

QUICK = {
    "datasets": "wnut17",
    "seeds": "1",
    "arms": "fish_dip,full",
    "train_size": 8,
    "steps": 10,
    "refresh_every": 5,
    "dev_size": 10,
    "test_size": 20,
    "evals": 2,
}
NORMAL = {
    "datasets": "wnut17,conll04",
    "seeds": "1,2,3",
    "arms": ",".join(ARMS),
    "train_size": None,
    "steps": None,
    "refresh_every": 100,
    "dev_size": 200,
    "test_size": None,
    "evals": 5,
}


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _pairs(text: str) -> list[tuple[str, str]]:
    """``"a=1,b=2"`` as [("a", "1"), ("b", "2")]; an item without "=" gives an empty value."""
    return [(k.strip(), v.strip()) for k, _, v in (x.partition("=") for x in text.split(",") if x.strip())]


def _pair_problems(
    flag: str, text: str, known: Iterable[str], what: str, valid: Callable[[str], bool], form: str
) -> list[str]:
    """What is wrong with each KEY=VALUE item of ``text``: an unknown key, an invalid value."""
    problems = []
    for key, value in _pairs(text):
        item = f"{key}={value}" if value else key
        if key not in known:
            problems.append(f"{flag} {item}: unknown {what} {key!r}")
        if not valid(value):
            problems.append(f"{flag} {item}: {form}")
    return problems


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def _names(text: str, known: Iterable[str], what: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"unknown {what}: {', '.join(unknown) or '(none given)'}; known: {', '.join(known)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["run", "report", "recheck"])
    p.add_argument(
        "results",
        nargs="*",
        type=Path,
        help="recheck: result files whose first training steps to repeat here",
    )
    p.add_argument(
        "--recheck-steps", type=int, default=4, help="recheck: training steps to repeat (default 4)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke mode: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + ", no sweep",
    )
    p.add_argument("--base", default=DEFAULT_BASE)
    p.add_argument(
        "--datasets", help=f"comma-separated, of {', '.join(DATASETS)} (default {NORMAL['datasets']})"
    )
    p.add_argument("--fractions", default="0.01,0.05", help="training subsets as fractions of train")
    p.add_argument(
        "--train-size", type=int, help="a fixed number of training sentences instead of --fractions"
    )
    p.add_argument("--seeds", help="comma-separated (default 1,2,3)")
    p.add_argument("--arms", help=f"comma-separated, of {', '.join(ALL_ARMS)} (default {', '.join(ARMS)})")
    p.add_argument("--steps", type=int, help="steps for every arm (default: core's auto, about 300)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--refresh-every", type=int, help="fish_dip mask refresh period (default 100)")
    p.add_argument("--sparsity", type=float, default=0.01)
    p.add_argument(
        "--bf16",
        default="",
        help="on|off, or DATASET=on|off,... : bf16 autocast on every machine, for every dataset or "
        "by dataset (default: on for bases over 50M parameters, as core's auto on native-bf16 "
        "hardware; off trains in fp32, many times faster where bf16 is emulated)",
    )
    p.add_argument("--dev-size", type=int, help="fixed dev subset for the curves and the sweep (default 200)")
    p.add_argument(
        "--test-size", type=int, help="score on a fixed test subset (default: the full test split)"
    )
    p.add_argument("--evals", type=int, help="dev evaluations per run, for the curves (default 5)")
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--sparse-lrs", default="1e-3,3e-3,1e-2", help="lr grid of fish_dip, fish, random")
    p.add_argument("--full-lrs", default="3e-5,1e-4,3e-4", help="lr grid of full")
    p.add_argument("--no-sweep", action="store_true", help="use core's default AdamW lr per arm")
    p.add_argument(
        "--fixed-lrs",
        default="",
        help="ARM=LR,...: rates set by hand for these arms, which are then not swept "
        "(say, the rates another study's sweep picked)",
    )
    p.add_argument(
        "--sweep-fractions",
        default="0.01",
        help="training subsets of the lr sweeps; each fraction's main runs use the nearest "
        "(default 0.01: one sweep sets the rates of every fraction)",
    )
    p.add_argument(
        "--sweep-widen",
        type=int,
        default=2,
        help="where a sweep scores best at an edge of its grid, add a rate past that edge; at most "
        "this many per side (default 2; 0 keeps the grids as given)",
    )
    p.add_argument("--sweep-seed", type=int, default=1)
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--results-dir", type=Path, help="default bench/results/quality[-quick][-BASE]")
    p.add_argument("--report", type=Path, help="markdown report path (default docs/quality[-quick].md)")
    p.add_argument("--img-dir", type=Path, help="plot folder (default docs/img)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse settings that cannot make a study, naming every problem at once."""
    problems = [
        f"--{name.replace('_', '-')} {x:g}: a fraction must be in (0, 1]"
        for name in ("fractions", "sweep_fractions")
        for x in _floats(getattr(args, name))
        if not 0 < x <= 1
    ]
    problems += [
        f"--{name.replace('_', '-')} {x:g}: a learning rate must be positive"
        for name in ("sparse_lrs", "full_lrs")
        for x in _floats(getattr(args, name))
        if not x > 0
    ]
    if args.sweep_widen < 0:
        problems.append(f"--sweep-widen {args.sweep_widen}: must be 0 or more")
    problems += _pair_problems(
        "--fixed-lrs",
        args.fixed_lrs,
        ALL_ARMS,
        "arm",
        _positive,
        "the rate must be a positive number (ARM=LR)",
    )
    if args.bf16 not in ("", "on", "off"):
        problems += _pair_problems(
            "--bf16",
            args.bf16,
            DATASETS,
            "dataset",
            lambda value: value in ("on", "off"),
            "the value must be on or off (DATASET=on|off)",
        )
    if problems:
        raise SystemExit("; ".join(problems))


def study_bf16(text: str, datasets: Sequence[str], base: str) -> tuple[tuple[str, bool], ...]:
    """Each dataset's precision from --bf16: "on", "off", or "DATASET=on|off,..."; a dataset it
    does not name gets the base's default."""
    by_dataset = dict.fromkeys(datasets, text) if text in ("on", "off") else dict(_pairs(text))
    return tuple((d, by_dataset[d] == "on" if d in by_dataset else default_bf16(base)) for d in datasets)


def study_from_args(args: argparse.Namespace, argv: Sequence[str]) -> Study:
    check_args(args)
    preset = QUICK if args.quick else NORMAL

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return preset[name] if value is None else value

    suffix = "" if args.base == DEFAULT_BASE else "-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(args.base).name)
    mode = "quality-quick" if args.quick else "quality"
    results = args.results_dir or RESULTS / f"{mode}{suffix}"
    # Reports of the real base go to docs/; other bases (tiny test models) stay with their results.
    report = args.report or (DOCS / f"{mode}.md" if not suffix else results / "report.md")
    img = args.img_dir or (DOCS / "img" if not suffix else results / "img")
    datasets = _names(pick("datasets"), DATASETS, "dataset")
    return Study(
        base=args.base,
        datasets=datasets,
        fractions=_floats(args.fractions),
        train_size=pick("train_size"),
        seeds=tuple(int(x) for x in pick("seeds").split(",")),
        arms=_names(pick("arms"), ALL_ARMS, "arm"),
        steps=pick("steps"),
        batch_size=args.batch_size,
        refresh_every=pick("refresh_every"),
        sparsity=args.sparsity,
        bf16=study_bf16(args.bf16, datasets, args.base),
        dev_size=pick("dev_size"),
        test_size=pick("test_size"),
        evals=pick("evals"),
        eval_batch_size=args.eval_batch_size,
        sparse_lrs=_floats(args.sparse_lrs),
        full_lrs=_floats(args.full_lrs),
        sweep=not (args.no_sweep or args.quick),
        fixed_lrs=tuple((arm, float(rate)) for arm, rate in _pairs(args.fixed_lrs)),
        sweep_fractions=_floats(args.sweep_fractions),
        sweep_widen=args.sweep_widen,
        sweep_seed=args.sweep_seed,
        device=args.device,
        quick=args.quick,
        data_dir=args.data_dir,
        results_dir=results,
        report_path=report,
        img_dir=img,
        # Named after the report, so that reports sharing a plot folder never overwrite each other's.
        img_prefix=f"{report.stem}-",
        command="python bench/quality.py " + " ".join(argv),
    )


def _ask_to_stop(signum: int, frame: Any) -> None:
    STOP.set()
    log.info("stop asked for (signal %d): the run in progress finishes, no other starts", signum)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    import matplotlib

    matplotlib.use("Agg")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.command == "recheck":
        if not args.results:
            raise SystemExit("recheck: name one or more result files")
        load = functools.cache(lambda name: core.load_base(name, device=args.device))
        same = [recheck(path, args.recheck_steps, args.data_dir, load) for path in args.results]
        return 0 if all(same) else 1
    elif args.results:
        raise SystemExit(f"{args.command}: takes no result files (recheck does)")
    study = study_from_args(args, argv)
    if not core.is_known_base(study.base):
        raise SystemExit(f"unknown base {study.base!r}")
    if args.command == "run":
        t0 = time.perf_counter()
        STOP.clear()
        previous = signal.signal(signal.SIGUSR1, _ask_to_stop)
        try:
            run_study(study)
        finally:
            signal.signal(signal.SIGUSR1, previous)
        log.info("study run took %.0f s", time.perf_counter() - t0)
    path = write_report(study)
    print(_rel(path, Path.cwd()))  # the one line a caller reads; progress goes to the log
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

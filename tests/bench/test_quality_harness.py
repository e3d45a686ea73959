"""bench/quality.py on tiny-t5: result files, skip-if-done, settings guard, lr pick, report."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "datasets"
# About 10 s on an idle machine: two tiny-t5 runs (training, dev and test generation) plus plots.
pytestmark = [
    pytest.mark.skipif(not (DATA / "wnut17").is_dir(), reason="shared datasets not present"),
    pytest.mark.slow,
]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


Q = _load()


def tiny_args(out: Path, *extra: str) -> list[str]:
    # The smallest study that still goes through every phase: 2 sentences, 1 step, 1 dev and test sentence.
    return [
        "--quick", "--base", "tiny-t5", "--train-size", "2", "--steps", "1", "--dev-size", "1",
        "--test-size", "1", "--results-dir", str(out / "res"), "--report", str(out / "report.md"),
        "--img-dir", str(out / "img"), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quality")
    assert Q.main(["run", *tiny_args(out)]) == 0
    return out


def test_run_writes_one_file_per_run(tiny_study: Path) -> None:
    files = sorted(p.name for p in (tiny_study / "res").iterdir())
    assert files == [
        "main__wnut17__n2__seed1__fish_dip__lr0.001.json",
        "main__wnut17__n2__seed1__full__lr0.0001.json",
    ]
    result: dict[str, Any] = json.loads((tiny_study / "res" / files[0]).read_text())
    assert result["status"] == "done" and result["steps_run"] == 1 and result["n_train"] == 2
    assert result["config"]["early_stop_patience"] == Q.NO_EARLY_STOP  # a fixed budget for every arm
    assert result["dev_curve"] and result["dev_curve"][-1]["step"] == 1
    assert set(result["test"]) == {"score", "entity_f1"}
    timing = result["timing"]
    assert timing["fit_cpu_s"] > 0 and timing["test_eval_cpu_s"] > 0  # CPU seconds beside wall seconds
    env = result["environment"]
    assert env["device_name"] and env["cpu_isa"] and len(env["base_fingerprint"]) == 64
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", env["code"])  # the commit the run's code came from
    assert result["mask_refreshes"][0]["step"] == 0 and result["mask_refreshes"][0]["touched"] > 0
    full: dict[str, Any] = json.loads((tiny_study / "res" / files[1]).read_text())
    assert full["train_ids"] == result["train_ids"]  # every arm of a seed trains on the same sentences
    assert full["mask_refreshes"] == []


def test_rerun_skips_finished_runs(tiny_study: Path) -> None:
    args = Q.parser().parse_args(["run", *tiny_args(tiny_study)])
    study = Q.study_from_args(args, [])
    before = {p: p.stat().st_mtime_ns for p in (tiny_study / "res").iterdir()}
    tally = Q.run_study(study)
    assert tally.ran == [] and len(tally.skipped) == 2
    assert {p: p.stat().st_mtime_ns for p in (tiny_study / "res").iterdir()} == before


def test_rerun_with_other_settings_is_refused(tiny_study: Path) -> None:
    with pytest.raises(SystemExit, match="other settings"):
        Q.main(["run", *tiny_args(tiny_study, "--refresh-every", "7")])
    # The precision too: a tiny base trains in fp32 by default, on every machine.
    with pytest.raises(SystemExit, match="bf16: False there, True now"):
        Q.main(["run", *tiny_args(tiny_study, "--bf16", "on")])
    assert Q.main(["run", *tiny_args(tiny_study, "--bf16", "off")]) == 0  # what it ran in: all skipped
    assert Q.default_bf16("gemma-3-270m") and not Q.default_bf16("tiny-t5")
    # By dataset: the one a run belongs to is what counts.
    with pytest.raises(SystemExit, match="bf16: False there, True now"):
        Q.main(["run", *tiny_args(tiny_study, "--bf16", "wnut17=on,conll04=off")])
    assert Q.main(["run", *tiny_args(tiny_study, "--bf16", "wnut17=off,conll04=on")]) == 0


def test_precision_by_dataset() -> None:
    assert Q.study_bf16("on", ["wnut17", "conll04"], "tiny-t5") == (("wnut17", True), ("conll04", True))
    assert Q.study_bf16("conll04=off", ["wnut17", "conll04"], "gemma-3-270m") == (
        ("wnut17", True),  # not named: the base's default
        ("conll04", False),
    )
    with pytest.raises(SystemExit) as err:
        Q.main(["report", "--bf16", "wnut17=yes,ontonotes=on"])
    assert str(err.value) == (
        "--bf16 wnut17=yes: the value must be on or off (DATASET=on|off); "
        "--bf16 ontonotes=on: unknown dataset 'ontonotes'"
    )


def test_recheck_repeats_a_runs_first_steps_and_spots_a_different_loss(
    tiny_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = tiny_study / "res" / "main__wnut17__n2__seed1__fish_dip__lr0.001.json"
    assert Q.main(["recheck", str(stored), "--device", "cpu"]) == 0  # same machine, same loss
    out = capsys.readouterr().out
    assert "steps 1-1: stored" in out and "same: this machine rounds like the run's" in out
    # A run whose stored loss is not what these steps give (as on a machine that rounds otherwise).
    result = json.loads(stored.read_text())
    result["loss_curve"][0][1] = round(result["loss_curve"][0][1] + 1e-6, 6)
    other = tmp_path / stored.name
    other.write_text(json.dumps(result))
    assert Q.main(["recheck", str(stored), str(other), "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert out.count("DIFFERS") == 1 and "differs: this machine rounds unlike the run's" in out
    with pytest.raises(SystemExit, match="name one or more result files"):
        Q.main(["recheck"])
    with pytest.raises(SystemExit, match="takes no result files"):
        Q.main(["report", str(stored)])


def test_sigusr1_lets_the_run_in_progress_finish_and_starts_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_execute = Q.execute

    def execute_then_signal(*args: Any, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = real_execute(*args, **kwargs)
        signal.raise_signal(signal.SIGUSR1)  # as `kill -USR1` would, while this run was going
        return result

    monkeypatch.setattr(Q, "execute", execute_then_signal)
    before = signal.getsignal(signal.SIGUSR1)
    assert Q.main(["run", *tiny_args(tmp_path)]) == 0
    files = sorted(p.name for p in (tmp_path / "res").iterdir())
    # The run in progress finished and was written; full was not started.
    assert files == ["main__wnut17__n2__seed1__fish_dip__lr0.001.json"]
    assert (tmp_path / "report.md").is_file()
    assert signal.getsignal(signal.SIGUSR1) == before  # the handler is only there while a study runs
    monkeypatch.setattr(Q, "execute", real_execute)
    assert Q.main(["run", *tiny_args(tmp_path)]) == 0  # the next start runs what was left
    assert len(list((tmp_path / "res").iterdir())) == 2


def test_a_variant_arm_trains_its_method_with_its_settings(tmp_path: Path) -> None:
    assert Q.main(["run", *tiny_args(tmp_path, "--arms", "fish_dip_entry,fish_dip")]) == 0
    results = {p.name.split("__")[4]: json.loads(p.read_text()) for p in (tmp_path / "res").iterdir()}
    assert set(results) == {"fish_dip_entry", "fish_dip"}
    variant, plain = results["fish_dip_entry"], results["fish_dip"]
    assert variant["method"] == plain["method"] and variant["method"]["type"] == "fish_dip"
    assert (
        variant["config"]["bias_correction"] == "per_entry" and plain["config"]["bias_correction"] == "global"
    )
    assert variant["key"]["lr"] == plain["key"]["lr"]  # core's fish_dip rate when nothing is swept
    # The report pairs the variant with the arm it changes, not only with full.
    report = (tmp_path / "report.md").read_text()
    diff = f"{100 * (variant['test']['entity_f1'] - plain['test']['entity_f1']):+.1f}"
    assert "## Variants against the arm they change" in report
    assert f"| wnut17 | 2 sent. | fish_dip_entry | fish_dip | entity F1 | {diff} | {diff} |" in report
    assert "## Paired differences against full" not in report  # no full arm in this study
    with pytest.raises(SystemExit, match="unknown arm: fish_dip_typo"):
        Q.main(["run", *tiny_args(tmp_path, "--arms", "fish_dip_typo")])


def test_report_tables_plots_and_incomplete_cells(tiny_study: Path) -> None:
    report = (tiny_study / "report.md").read_text()
    assert report.startswith("# Quality study (quick smoke run)") and "Generated file" in report
    run = json.loads((tiny_study / "res" / "main__wnut17__n2__seed1__fish_dip__lr0.001.json").read_text())
    f1 = f"{100 * run['test']['entity_f1']:.1f}"
    assert f"| wnut17 | 2 sent. | fish_dip | 0.001 | entity F1 | {f1} | {f1} |" in report  # seed 1, mean
    assert "## Paired differences against full fine-tuning" in report and "## Mask statistics" in report
    full = json.loads((tiny_study / "res" / "main__wnut17__n2__seed1__full__lr0.0001.json").read_text())
    diff = f"{100 * (run['test']['entity_f1'] - full['test']['entity_f1']):+.1f}"
    ahead = int(run["test"]["entity_f1"] > full["test"]["entity_f1"])
    paired = f"| wnut17 | 2 sent. | fish_dip | full | entity F1 | {diff} | {diff} | {ahead} of 1 |"  # 1 seed
    assert paired in report
    code = run["environment"]["code"]
    assert f"- code (git commit of the runs): {code[:12]}{code[40:]} (2 runs)" in report
    timing_prefix = "| wnut17 | 2 sent. | fish_dip | 1 |"  # dataset, train, arm, steps
    timing_row = next(line for line in report.splitlines() if line.startswith(timing_prefix))
    assert timing_row.endswith(f"| {run['environment']['device_name']} (1) |")
    # A row whose seeds ran on different machines says so (their speeds are averaged).
    envs = {seed: {"environment": {"device_name": name}} for seed, name in enumerate("BAB", 1)}
    assert Q.Cell("wnut17", "f0.01", "fish", 1e-3, envs).machines() == "A (1); B (2)"
    assert sorted(p.name for p in (tiny_study / "img").iterdir()) == [
        "report-dev-wnut17-n2.png",  # named after the report (out/report.md)
        "report-mask-wnut17-n2.png",
    ]
    assert Q.main(["report", *tiny_args(tiny_study, "--seeds", "1,2")]) == 0
    assert "n/a (1 of 2 seeds)" in (tiny_study / "report.md").read_text()


def test_subsets_are_drawn_by_the_seed() -> None:
    assert Q.subset_ids("f0.01", 3394, 1) == Q.subset_ids("f0.01", 3394, 1)
    assert Q.subset_ids("f0.01", 3394, 1) != Q.subset_ids("f0.01", 3394, 2)
    assert len(Q.subset_ids("f0.05", 922, 3)) == 46 and len(Q.subset_ids("n8", 3394, 1)) == 8
    assert Q.subset_label("f0.01") == "1%" and Q.subset_label("n8") == "8 sent."


def _sweep_file(
    study: Any, arm: str, lr: float, score: float, entity: float, subset: str = "f0.01", phase: str = "sweep"
) -> None:
    key = Q.RunKey(phase, "conll04", subset, study.sweep_seed, arm, lr)
    dev = {"step": 3, "score": score, "entity_f1": entity, "relation_f1": score}
    payload = {"status": "done", "key": {"phase": phase}, "dev_final": dev}
    Q.write_atomic(study.results_dir / key.filename(), payload)


def test_lr_pick_waits_for_the_whole_grid_and_breaks_ties(tmp_path: Path) -> None:
    grid = ["--sparse-lrs", "1e-3,3e-3,1e-2", "--results-dir", str(tmp_path)]
    args = Q.parser().parse_args(
        ["run", "--base", "tiny-t5", "--datasets", "conll04", "--arms", "fish", *grid]
    )
    study = Q.study_from_args(args, [])
    _sweep_file(study, "fish", 1e-3, 0.0, 0.20)
    _sweep_file(study, "fish", 3e-3, 0.0, 0.30)
    assert Q.pick_lr(study, "conll04", "fish", "f0.01")[0] is None  # 1e-2 not run yet
    assert Q.main_keys(study, "conll04") == []
    _sweep_file(study, "fish", 1e-2, 0.0, 0.30)
    lr, points = Q.pick_lr(study, "conll04", "fish", "f0.01")
    assert lr == 3e-3 and len(points) == 3  # relation F1 tied at 0: entity F1, then the smaller lr
    assert Q.pick_lr(study, "conll04", "fish", "f0.05")[0] == lr  # one sweep (1%) for every fraction
    assert {k.subset for k in Q.main_keys(study, "conll04")} == {"f0.01", "f0.05"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_main_runs_pair_every_arm_of_a_seed_before_the_next_seed(tmp_path: Path) -> None:
    grid = ["--sparse-lrs", "1e-3", "--full-lrs", "1e-4", "--results-dir", str(tmp_path)]
    args = Q.parser().parse_args(
        ["run", "--base", "tiny-t5", "--datasets", "conll04", "--arms", "fish,full", "--seeds", "1,2", *grid]
    )
    study = Q.study_from_args(args, [])
    _sweep_file(study, "fish", 1e-3, 0.1, 0.2)
    _sweep_file(study, "full", 1e-4, 0.1, 0.2)
    order = [(k.subset, k.seed, k.arm, k.lr) for k in Q.main_keys(study, "conll04")]
    assert order == [
        (s, seed, arm, lr)
        for s in ("f0.01", "f0.05")
        for seed in (1, 2)
        for arm, lr in (("fish", 1e-3), ("full", 1e-4))
    ]


def test_an_arm_with_a_rate_set_by_hand_is_not_swept(tmp_path: Path) -> None:
    grid = [
        "--sparse-lrs",
        "1e-3,3e-3",
        "--full-lrs",
        "1e-4",
        "--fixed-lrs",
        "fish=2e-3",
        "--results-dir",
        str(tmp_path),
    ]
    args = Q.parser().parse_args(
        ["run", "--base", "tiny-t5", "--datasets", "conll04", "--arms", "fish,full", *grid]
    )
    study = Q.study_from_args(args, [])
    assert {(k.arm, k.lr) for k in Q.sweep_keys(study, "conll04")} == {("full", 1e-4)}
    assert Q.pick_lr(study, "conll04", "fish", "f0.01") == (2e-3, [])
    assert {k.arm for k in Q.main_keys(study, "conll04")} == {"fish"}  # full's sweep is still to run
    _sweep_file(study, "full", 1e-4, 0.1, 0.2)
    assert [(k.arm, k.lr) for k in Q.main_keys(study, "conll04") if k.seed == 1 and k.subset == "f0.01"] == [
        ("fish", 2e-3),
        ("full", 1e-4),
    ]
    assert "Rates set by hand (--fixed-lrs), not swept: fish 0.002." in "\n".join(Q.sweep_section(study))


def test_a_sweep_per_fraction_picks_each_fractions_rate(tmp_path: Path) -> None:
    grid = ["--sparse-lrs", "1e-3,3e-3", "--sweep-fractions", "0.01,0.05", "--sweep-widen", "0"]
    grid += ["--results-dir", str(tmp_path)]
    args = Q.parser().parse_args(
        [
            "run",
            "--base",
            "tiny-t5",
            "--datasets",
            "conll04",
            "--arms",
            "fish",
            "--fractions",
            "0.01,0.05,0.2",
            *grid,
        ]
    )
    study = Q.study_from_args(args, [])
    assert [study.sweep_subset(s) for s in study.subsets()] == ["f0.01", "f0.05", "f0.05"]  # nearest
    assert [(k.subset, k.lr) for k in Q.sweep_keys(study, "conll04")] == [
        ("f0.01", 1e-3), ("f0.01", 3e-3), ("f0.05", 1e-3), ("f0.05", 3e-3),
    ]  # fmt: skip
    _sweep_file(study, "fish", 1e-3, 0.5, 0.5)
    _sweep_file(study, "fish", 3e-3, 0.1, 0.1)
    _sweep_file(study, "fish", 1e-3, 0.1, 0.1, subset="f0.05")
    assert Q.pick_lr(study, "conll04", "fish", "f0.01")[0] == 1e-3
    assert Q.pick_lr(study, "conll04", "fish", "f0.05")[0] is None  # its own sweep is not complete
    assert {k.subset for k in Q.main_keys(study, "conll04")} == {"f0.01"}
    # The sweep seed's main run at a grid rate stands in for the sweep run: the same training.
    _sweep_file(study, "fish", 3e-3, 0.3, 0.3, subset="f0.05", phase="main")
    lr, points = Q.pick_lr(study, "conll04", "fish", "f0.05")
    assert lr == 3e-3 and [p["source"] for p in points] == ["sweep", "main run"]
    assert Q.pick_lr(study, "conll04", "fish", "f0.2")[0] == 3e-3
    keys = Q.main_keys(study, "conll04")
    assert {(k.subset, k.lr) for k in keys} == {("f0.01", 1e-3), ("f0.05", 3e-3), ("f0.2", 3e-3)}
    report = "\n".join(Q.sweep_section(study))
    assert (
        "| conll04 | 5% | fish | 0.003 | entity F1 30.0, relation F1 30.0" in report
        and "(main run) | for 5%, 20% |" in report
    )


def test_a_sweep_that_wins_at_an_edge_widens_its_grid(tmp_path: Path) -> None:
    assert [Q.widened_rate((1e-4, 3e-4, 1e-3, 3e-3), -1, k) for k in (1, 2)] == [3e-5, 1e-5]
    assert Q.widened_rate((1e-4, 3e-4, 1e-3, 3e-3), 1, 1) == 1e-2
    assert Q.widened_rate((1e-5, 3e-5, 1e-4, 3e-4), 1, 1) == 1e-3
    lrs = ["--sparse-lrs", "1e-3,3e-3", "--full-lrs", "1e-4,3e-4", "--results-dir", str(tmp_path)]
    args = Q.parser().parse_args(
        ["run", "--base", "tiny-t5", "--datasets", "conll04", "--arms", "fish,full", *lrs]
    )
    study = Q.study_from_args(args, [])

    def grid(arm: str) -> list[float]:
        return [k.lr for k in Q.sweep_keys(study, "conll04") if k.arm == arm]

    _sweep_file(study, "fish", 1e-3, 0.4, 0.4)
    _sweep_file(study, "fish", 3e-3, 0.1, 0.1)
    _sweep_file(study, "full", 1e-4, 0.1, 0.1)
    assert grid("fish") == [3e-4, 1e-3, 3e-3] and grid("full") == [1e-4, 3e-4]  # full: not complete
    assert Q.pick_lr(study, "conll04", "fish", "f0.01")[0] is None  # waits for the widened point
    _sweep_file(study, "fish", 3e-4, 0.5, 0.5)  # the edge wins again: one more, the last (--sweep-widen 2)
    assert grid("fish") == [1e-4, 3e-4, 1e-3, 3e-3]
    _sweep_file(study, "fish", 1e-4, 0.6, 0.6)
    assert grid("fish") == [1e-4, 3e-4, 1e-3, 3e-3]
    assert Q.pick_lr(study, "conll04", "fish", "f0.01")[0] == 1e-4
    _sweep_file(study, "full", 3e-4, 0.2, 0.2)  # the high edge wins: 1e-3 is added
    assert grid("full") == [1e-4, 3e-4, 1e-3]
    _sweep_file(study, "full", 1e-3, 0.0, 0.0)  # inside now
    assert grid("full") == [1e-4, 3e-4, 1e-3] and Q.pick_lr(study, "conll04", "full", "f0.01")[0] == 3e-4
    report = "\n".join(Q.sweep_section(study))
    assert "| conll04 | 1% | fish | 0.0001 (widened) | entity F1 60.0" in report
    # An edge that only ties its neighbour (every rate at 0, say) gives no reason to look past it.
    lrs = ["--sparse-lrs", "1e-3,3e-3", "--results-dir", str(tmp_path / "ties")]
    ties = Q.study_from_args(
        Q.parser().parse_args(["run", "--datasets", "conll04", "--arms", "fish", *lrs]), []
    )
    for lr in (1e-3, 3e-3):
        _sweep_file(ties, "fish", lr, 0.0, 0.0)
    assert [k.lr for k in Q.sweep_keys(ties, "conll04")] == [1e-3, 3e-3]
    assert Q.pick_lr(ties, "conll04", "fish", "f0.01")[0] == 1e-3


def test_bad_study_settings_are_refused_all_at_once() -> None:
    args = Q.parser().parse_args(
        [
            "run", "--fractions", "0.01,0", "--sweep-fractions", "1.5", "--full-lrs=-1e-4",
            "--sweep-widen=-1", "--fixed-lrs", "fish=0,lora=1e-3,full",
        ]
    )  # fmt: skip
    with pytest.raises(SystemExit) as failed:
        Q.study_from_args(args, [])
    message = str(failed.value)
    for problem in (
        "--fractions 0:",
        "--sweep-fractions 1.5:",
        "--full-lrs -0.0001:",
        "--sweep-widen -1:",
        "--fixed-lrs fish=0: the rate must be",
        "--fixed-lrs lora=1e-3: unknown arm",
        "--fixed-lrs full: the rate must be",
    ):
        assert problem in message

"""Subnormal floats and CPU training speed: core's flush-to-zero mode against the CPU's default.

    python bench/denormals.py                                  # gemma-3-270m on CoNLL04, fp32
    python bench/denormals.py --base tiny-causal --steps 20    # smoke run

Two arms, each in its own process, with the same data, seed and steps: ``flush``, core as
shipped (subnormals read and written as zero from core's first entry point on), and
``keep``, the CPU's default (``FISHDIP_FLUSH_DENORMALS=0``). The data is the quality
study's CoNLL04 1% subset for seed 1 (9 sentences); the method its fish_dip arm at 1e-4
(AdamW, 1% sparsity, a mask refresh every 50 steps) with bf16 off, as the study trains CoNLL04.

Each arm also times a matrix product whose operand is subnormal, on its own threads: the
mechanism, measured apart from training; and the share of the output softmax that is
subnormal in two steps. The parent prints, per arm, the median step time over the first steps
and over the last ones (once the model is confident), and ``keep`` against ``flush`` for both
(step 1, the warm-up, and the two steps whose softmax is counted are left out), and how far
the two arms' losses are apart: flushing changes values under 1.2e-38 only, so the losses
should agree to rounding.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"flush": "1", "keep": "0"}


def time_matmul(torch: Any, subnormal: bool, repeats: int = 3) -> float:
    a = torch.randn(512, 2048)
    if subnormal:  # built from bit patterns, so no arithmetic can flush it before the product
        b = torch.randint(1, 1 << 23, (2048, 512), dtype=torch.int32).view(torch.float32)
    else:
        b = torch.randn(2048, 512)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return (time.perf_counter() - t0) / repeats


def run_arm(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from quality import DATASETS, read_split, subset_ids

    import core

    info = DATASETS["conll04"]
    spec = core.TaskSpec.from_dict(info.spec())
    train = read_split(info, spec, args.data_dir, info.files[0])
    subset = [train[i] for i in subset_ids(f"f{args.fraction}", len(train), args.seed)]
    base = core.load_base(args.base, device="cpu")  # core's first entry point: the mode is set here
    matmul = {"normal_s": time_matmul(torch, False), "subnormal_s": time_matmul(torch, True)}

    # The share of the output layer's softmax that is subnormal (whatever the mode, counted from
    # the log-probabilities: exp(x) is subnormal for x in [-103.3, -87.3)), in two steps: the
    # second and the last. Counting costs a logsumexp per chunk, so only those steps pay it.
    from core import head_loss

    counted: dict[int, list[int]] = {}
    counting: list[int] = []
    logits = head_loss._logits

    def counting_logits(hc: Any, w: Any, softcap: float | None) -> Any:
        z, t = logits(hc, w, softcap)
        if counting:
            lp = z - torch.logsumexp(z, 1, keepdim=True)
            tally = counted.setdefault(counting[0], [0, 0])
            tally[0] += int(((lp >= -103.28) & (lp < -87.34)).sum())
            tally[1] += lp.numel()
        return z, t

    head_loss._logits = counting_logits
    steps: list[dict[str, float]] = []
    last = [time.perf_counter()]

    class Clock(core.Callbacks):
        def on_step(self, info: core.StepInfo) -> None:
            now = time.perf_counter()
            steps.append(
                {"step": info.step, "loss": info.loss, "s": now - last[0], "counted": bool(counting)}
            )
            counting.clear()
            if info.step in (1, info.total_steps - 1):
                counting.append(info.step + 1)
            last[0] = now

        def on_mask_refresh(self, info: core.MaskRefreshInfo) -> None:
            last[0] = time.perf_counter()  # a refresh is not a step

    method = core.MethodConfig(type="fish_dip", sparsity=0.01, refresh_every=args.refresh_every)
    cfg = core.TrainConfig(
        max_steps=args.steps,
        batch_size=8,
        optimizer="adamw",
        learning_rate=args.lr,
        seed=args.seed,
        bf16=False,
        early_stop_patience=10**6,
    )
    t0 = time.perf_counter()
    last[0] = t0
    core.fit(base, spec, subset, method=method, config=cfg, callbacks=Clock())
    return {
        "arm": args.arm,
        "n_train": len(subset),
        "fit_s": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
        "matmul": matmul,
        "subnormal_softmax_share": {step: n / max(1, total) for step, (n, total) in sorted(counted.items())},
        "steps": steps,
    }


def median_s(steps: list[dict[str, float]]) -> float:
    return statistics.median(s["s"] for s in steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="gemma-3-270m")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--window", type=int, default=15, help="steps in each of the first and last windows")
    ap.add_argument("--refresh-every", type=int, default=50)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets")
    ap.add_argument("--arm", choices=sorted(ARMS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args)))
        return
    if args.steps < 2 * args.window + 1:
        raise SystemExit(f"--steps must be at least {2 * args.window + 1} for two windows of {args.window}")
    sys.path.insert(0, str(ROOT))
    from core.hardware import FLUSH_DENORMALS_ENV, cpu_model

    results: dict[str, dict[str, Any]] = {}
    for arm, flag in ARMS.items():
        cmd = [sys.executable, __file__, "--arm", arm, "--base", args.base, "--steps", str(args.steps)]
        cmd += ["--refresh-every", str(args.refresh_every), "--lr", str(args.lr)]
        cmd += ["--fraction", str(args.fraction), "--seed", str(args.seed), "--data-dir", str(args.data_dir)]
        env = {**os.environ, FLUSH_DENORMALS_ENV: flag}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        r = results[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
        steps = [s for s in r["steps"][1:] if not s["counted"]]  # step 1 pays for warm-up
        r["first_s"] = median_s(steps[: args.window])
        r["last_s"] = median_s(steps[-args.window :])
        mm, share = r["matmul"], r["subnormal_softmax_share"]
        print(
            f"{arm:5s} fit {r['fit_s']:7.1f}s; median step over the first {args.window} steps "
            f"{r['first_s']:.2f}s (loss {steps[args.window - 1]['loss']:.2e}), over the last "
            f"{args.window} {r['last_s']:.2f}s (loss {steps[-1]['loss']:.2e})\n"
            f"      a matrix product with a subnormal operand: {mm['subnormal_s'] / mm['normal_s']:.1f}x "
            f"a normal one ({r['threads']} threads); subnormal share of the output softmax: "
            + ", ".join(f"step {k} {v:.1%}" for k, v in share.items()),
            flush=True,
        )
    flush, keep = results["flush"], results["keep"]
    print(
        f"\nbase={args.base} steps={args.steps} n_train={flush['n_train']} lr={args.lr} "
        f"refresh_every={args.refresh_every} bf16=off; {cpu_model()}"
    )
    print(
        f"keep / flush: step time over the first {args.window} steps "
        f"{keep['first_s'] / flush['first_s']:.2f}x, "
        f"over the last {args.window} {keep['last_s'] / flush['last_s']:.2f}x, "
        f"whole fit {keep['fit_s'] / flush['fit_s']:.2f}x"
    )
    pairs = zip(flush["steps"], keep["steps"], strict=True)
    gaps = [abs(a["loss"] - b["loss"]) / max(abs(b["loss"]), 1e-12) for a, b in pairs]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    print(
        f"losses: largest relative gap {gaps[worst]:.2e} at step {flush['steps'][worst]['step']:.0f} "
        f"({flush['steps'][worst]['loss']:.6g} against {keep['steps'][worst]['loss']:.6g}); "
        f"final {flush['steps'][-1]['loss']:.6g} against {keep['steps'][-1]['loss']:.6g}"
    )


if __name__ == "__main__":
    main()

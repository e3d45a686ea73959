"""Training benchmark: FISH-DIP against full fine-tuning, same base, data, batch and steps.

    python bench/train.py                         # gemma-3-270m, 8 WNUT-17 sentences a batch
    python bench/train.py --base tiny-t5 --steps 40   # quick smoke run
    python bench/train.py --bf16 compare --optimizers adamw --steps 20   # bf16 autocast against fp32

Each arm runs in its own process (so peak memory is that arm's alone) and prints JSON; the
parent prints ratios against full fine-tuning measured in the same run:
time per step, total time including mask refreshes, peak memory (resident set, and its
growth above the loaded base), and the delta's bytes against a full checkpoint. With
``--bf16 compare`` every arm runs under bf16 autocast and in fp32, and the parent also prints
bf16 against fp32 per arm (and whether this machine has native bf16, which core's auto needs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "wnut17" / "wnut17train.conll"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_arm(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    import torch

    import core
    from core.data import read_conll
    from core.memory import allocator

    torch.manual_seed(0)
    method_type, optimizer = args.arm.split(":")
    raw = [r for r in read_conll(DATA) if any(t != "O" for t in r["tags"]) and len(r["tokens"]) <= 30]
    raw = raw[: args.examples]
    labels = sorted({t[2:] for r in raw for t in r["tags"] if t != "O"})
    spec = core.TaskSpec.from_dict({"type": "ner", "labels": labels})
    train = core.get_task("ner").validate(spec, raw).examples
    base = core.load_base(args.base, device="cpu")
    rss_base = rss_mb()
    step_times: list[float] = []
    refresh_s: list[float] = []
    last = [time.perf_counter()]

    class Clock(core.Callbacks):
        def on_step(self, info: core.StepInfo) -> None:
            now = time.perf_counter()
            step_times.append(now - last[0])
            last[0] = now

        def on_mask_refresh(self, info: core.MaskRefreshInfo) -> None:
            refresh_s.append(info.seconds)
            last[0] = time.perf_counter()

    method = core.MethodConfig(type=method_type, sparsity=args.sparsity, refresh_every=args.refresh_every)
    cfg = core.TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch,
        optimizer=optimizer,
        seed=0,
        bf16={"auto": None, "on": True, "off": False}[args.bf16],
        early_stop_patience=10**6,
    )
    t0 = time.perf_counter()
    result = core.fit(base, spec, train, method=method, config=cfg, callbacks=Clock())
    total = time.perf_counter() - t0
    out: dict[str, Any] = {
        "arm": args.arm,
        "allocator": allocator(),
        "steps": result.steps,
        "total_s": total,
        "step_s_median": sorted(step_times)[len(step_times) // 2],
        "refresh_s": sum(refresh_s),
        "refreshes": len(refresh_s),
        "peak_rss_mb": peak_mb(),
        "base_rss_mb": rss_base,
        "train_loss": result.train_loss,
        "bf16": result.config.bf16,  # what "auto" came to on this machine
        "full_checkpoint_bytes": sum(p.numel() * p.element_size() for p in base.model.parameters()),
    }
    with tempfile.TemporaryDirectory() as d:
        info = core.save_delta(result, base, Path(d) / "m.safetensors")
        out["delta_bytes"] = info.bytes
        out["parameters_changed"] = info.parameters_changed
    return out


def arm_env(allocator: str) -> dict[str, str]:
    env = os.environ.copy()
    if allocator == "jemalloc":
        sys.path.insert(0, str(ROOT))
        from core.memory import jemalloc_path

        lib = jemalloc_path()
        if lib is None:
            raise SystemExit("--allocator jemalloc: libjemalloc.so.2 not found (apt install libjemalloc2)")
        env["LD_PRELOAD"] = lib
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="gemma-3-270m")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--sparsity", type=float, default=0.01)
    ap.add_argument("--refresh-every", type=int, default=50)
    ap.add_argument(
        "--bf16",
        choices=["auto", "on", "off", "compare"],
        default="auto",
        help="autocast; auto: core's (bases over 50M on native-bf16 hardware); compare: on and off",
    )
    ap.add_argument("--optimizers", default="adamw,adafactor")
    ap.add_argument(
        "--allocator",
        choices=["system", "jemalloc"],
        default="system",
        help="jemalloc: run both arms with libjemalloc preloaded (LD_PRELOAD), as the worker does",
    )
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args)))
        return
    sys.path.insert(0, str(ROOT))
    import torch

    from core.hardware import cpu_model, native_bf16

    precisions = ["on", "off"] if args.bf16 == "compare" else [args.bf16]
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for opt, method, bf16 in itertools.product(args.optimizers.split(","), ("full", "fish_dip"), precisions):
        arm = f"{method}:{opt}"
        cmd = [
            sys.executable,
            __file__,
            "--arm",
            arm,
            "--base",
            args.base,
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            "--examples",
            str(args.examples),
            "--sparsity",
            str(args.sparsity),
            "--refresh-every",
            str(args.refresh_every),
            "--bf16",
            bf16,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=arm_env(args.allocator), check=True)
        r = results[(arm, bf16)] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{arm:17s} bf16 {'on' if r['bf16'] else 'off':3s}  total {r['total_s']:8.1f}s"
            f"  step {r['step_s_median']:.3f}s"
            f"  refreshes {r['refreshes']}"
            f" ({r['refresh_s']:.1f}s)  peak {r['peak_rss_mb']:.0f} MB (base {r['base_rss_mb']:.0f} MB)"
            f"  delta {r['delta_bytes'] / 1e6:.2f} MB ({r['parameters_changed']} entries)",
            flush=True,
        )
    print(
        f"\nbase={args.base} steps={args.steps} batch={args.batch} sparsity={args.sparsity} "
        f"refresh_every={args.refresh_every} bf16={args.bf16} allocator={args.allocator}; "
        f"{cpu_model()}: native bf16 {'yes' if native_bf16(torch.device('cpu')) else 'no'}"
    )
    for opt, bf16 in itertools.product(args.optimizers.split(","), precisions):
        full, fd = results[(f"full:{opt}", bf16)], results[(f"fish_dip:{opt}", bf16)]
        grow_full = full["peak_rss_mb"] - full["base_rss_mb"]
        grow_fd = fd["peak_rss_mb"] - fd["base_rss_mb"]
        print(
            f"[{opt}, bf16 {bf16}] FISH-DIP / full: "
            f"step time {fd['step_s_median'] / full['step_s_median']:.2f}x, "
            f"total time {fd['total_s'] / full['total_s']:.2f}x (target <= 1.1), "
            f"peak memory {fd['peak_rss_mb'] / full['peak_rss_mb']:.2f}x "
            f"(training growth {grow_fd / max(grow_full, 1e-9):.2f}x; target <= 0.6 with adamw), "
            f"delta {fd['delta_bytes'] / fd['full_checkpoint_bytes']:.4f} of a full checkpoint "
            "(target <= 0.05)"
        )

    if args.bf16 == "compare":
        for opt, method in itertools.product(args.optimizers.split(","), ("full", "fish_dip")):
            on, off = results[(f"{method}:{opt}", "on")], results[(f"{method}:{opt}", "off")]
            print(
                f"[{method}:{opt}] bf16 / fp32: step time {on['step_s_median'] / off['step_s_median']:.2f}x, "
                f"total time {on['total_s'] / off['total_s']:.2f}x, final training loss "
                f"{on['train_loss']:.6f} against {off['train_loss']:.6f} "
                f"({(on['train_loss'] - off['train_loss']) / off['train_loss']:+.2%})"
            )


if __name__ == "__main__":
    main()

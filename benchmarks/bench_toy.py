"""Wall time of the toy policy's building blocks and training loops on CPU.

The advanced pages run dozens of short toy trainings at build time, so these numbers decide the
section's execution budget. Each row is the median over ``--repeats`` runs (after one warm-up)
in the current process, with ``torch.set_num_threads(--threads)``.

    python benchmarks/bench_toy.py                # 2 threads, 5 repeats
    python benchmarks/bench_toy.py --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from nemo_rl_theory.toy import (
    Task,
    build_preference_pairs,
    frozen_copy,
    generate,
    make_policy,
    sft_policy,
    train_dpo,
    train_grpo,
    train_sft,
)

TASK = Task("reverse", 4)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = sft_policy(TASK, steps=100)
    pairs = build_preference_pairs(start, TASK, seed=0)
    problems = TASK.sample(256, torch.Generator().manual_seed(0))

    def fresh() -> torch.nn.Module:
        return sft_policy(TASK, steps=100)

    cases: dict[str, Callable[[], object]] = {
        "generate 256 responses (sampled)": lambda: generate(start, problems, generator=torch.Generator()),
        "train_sft 100 steps x 64": lambda: train_sft(make_policy(0), TASK, steps=100),
        "build_preference_pairs 256 x 4": lambda: build_preference_pairs(start, TASK, seed=0),
        "train_dpo 60 steps x 64 pairs": lambda: train_dpo(fresh(), pairs, reference=frozen_copy(start), steps=60),
        "train_grpo 100 steps x 32 x 8": lambda: train_grpo(fresh(), TASK, steps=100),
        "train_grpo 25 steps x 16 x 8": lambda: train_grpo(fresh(), TASK, steps=25, prompts_per_step=16),
    }
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} (min - max), seconds")
    print(f"| {'case':<34} | median | min - max |")
    print(f"| {'-' * 34} | ---: | ---: |")
    for name, fn in cases.items():
        median, low, high = timed(fn, args.repeats)
        print(f"| {name:<34} | {median:.3f} | {low:.3f} - {high:.3f} |")


if __name__ == "__main__":
    main()

"""token_logprobs vs. the naive ``log_softmax(logits).gather(targets)``: time and peak memory.

Each method runs in its own child process, so the peak resident set size (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs`` right before the measured step) belongs to that
method alone. Memory is reported as the peak above the process's baseline *before* the logits
were allocated, in units of the logits' size: the logits themselves count 1.0 and their
gradient another 1.0, so 2.0 is the floor for any method that returns ``logits.grad``.

    python benchmarks/bench_token_logprobs.py                 # V = 128256, B*T = 4 x 256, float32
    python benchmarks/bench_token_logprobs.py --vocab 32000 --batch 8 --length 128 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("naive", "token_logprobs")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak() -> None:
    # Writing 5 resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def child(method: str, batch: int, length: int, vocab: int, repeats: int, seed: int) -> dict:
    import torch

    from nemo_rl_theory import token_logprobs

    def naive(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)

    fn = naive if method == "naive" else token_logprobs
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, vocab, (batch, length), generator=gen)
    upstream = torch.randn(batch, length, generator=gen)
    baseline_kib = _rss_kib("VmRSS")
    logits = torch.randn(batch, length, vocab, generator=gen).requires_grad_()
    logits_bytes = logits.numel() * logits.element_size()

    times = []
    peaks = []
    for _ in range(repeats + 1):  # the first run warms up and is not timed
        logits.grad = None
        _reset_peak()
        start = time.perf_counter()
        out = fn(logits, targets)
        (out * upstream).sum().backward()
        times.append(time.perf_counter() - start)
        peaks.append(_rss_kib("VmHWM"))
        del out
    checksum = float(logits.grad.double().abs().sum())
    peak_bytes = (max(peaks[1:]) - baseline_kib) * 1024
    return {
        "method": method,
        "median_s": statistics.median(times[1:]),
        "min_s": min(times[1:]),
        "peak_bytes": peak_bytes,
        "logits_bytes": logits_bytes,
        "peak_over_logits": peak_bytes / logits_bytes,
        "grad_checksum": checksum,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = child(args.child, args.batch, args.length, args.vocab, args.repeats, args.seed)
        print(json.dumps(result))
        return

    results = []
    for method in METHODS:
        cmd = [sys.executable, __file__, "--child", method]
        cmd += ["--batch", str(args.batch), "--length", str(args.length), "--vocab", str(args.vocab)]
        cmd += ["--repeats", str(args.repeats), "--seed", str(args.seed)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))

    naive, ours = results
    rel = abs(naive["grad_checksum"] - ours["grad_checksum"]) / naive["grad_checksum"]
    gib = 1024**3
    print(
        f"token_logprobs benchmark: B*T = {args.batch}x{args.length} = {args.batch * args.length}, "
        f"V = {args.vocab}, float32, {naive['threads']} threads, torch {naive['torch']}; "
        f"logits = {naive['logits_bytes'] / gib:.3f} GiB; forward + backward, median of {args.repeats}"
    )
    print()
    print(f"| {'method':<32} | {'time (s)':>9} | {'peak (GiB)':>10} | {'peak / logits':>13} |")
    print(f"|{'-' * 34}|{'-' * 11}|{'-' * 12}|{'-' * 15}|")
    for r in results:
        name = "log_softmax + gather (naive)" if r["method"] == "naive" else "nemo_rl_theory.token_logprobs"
        print(
            f"| {name:<32} | {r['median_s']:>9.3f} | {r['peak_bytes'] / gib:>10.3f} | {r['peak_over_logits']:>12.2f}x |"
        )
    print(
        f"| {'ratio (ours / naive)':<32} | {ours['median_s'] / naive['median_s']:>9.2f} | "
        f"{ours['peak_bytes'] / naive['peak_bytes']:>10.2f} | {'':>13} |"
    )
    print()
    print(f"gradient checksum agreement: relative difference {rel:.1e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2))


if __name__ == "__main__":
    main()

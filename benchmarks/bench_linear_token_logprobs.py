"""linear_token_logprobs vs. building the logits: forward + backward time and peak memory.

Three routes from the last hidden state ``hidden[1, N, H]`` and the LM head ``weight[V, H]``
to the ``[1, N]`` log-probs of the targets, each followed by backward to ``hidden`` and
``weight``:

- ``naive``: ``log_softmax(hidden @ weight.T).gather(targets)``;
- ``token_logprobs``: ``nemo_rl_theory.token_logprobs(hidden @ weight.T, targets)`` (the
  logits are built, the log-softmax is not kept);
- ``linear_token_logprobs``: ``nemo_rl_theory.linear_token_logprobs(hidden, weight, targets)``
  (the logits are never built; backward recomputes them block by block).

Each route runs in its own child process, so the peak resident set size (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs`` right before each measured step) belongs to that
route alone. Memory is the peak *above the inputs and the returned gradients*: the baseline
is the resident size after ``hidden``, ``weight``, the targets and the upstream gradient are
allocated (before any step), and the bytes of ``hidden.grad`` and ``weight.grad``, which every
route must return and which are alive at the end of each step, are subtracted from the peak.
What remains is the route's working memory, reported in units of the logits' size
``N * V * 4`` bytes (the naive route keeps about two logits-sized tensors at once). At
small sizes (logits of a few MiB) the column is dominated by the process's fixed overheads
(thread pools, allocator caches first touched in the warm-up step) and means little.

Time is the median (and minimum) over ``--repeats`` steps after one untimed warm-up step.
Absolute times depend on the machine and on its load (printed); compare the ratios. The
targets of the issue: ``linear_token_logprobs`` at a peak of at most 0.25x the logits and a
time of at most 1.5x the naive route (4/3 is the floor for a route that recomputes the
logits: four ``2 N V H``-FLOP matmuls against three).

    python benchmarks/bench_linear_token_logprobs.py                # V = 128256, H = 1024, N = 1024
    python benchmarks/bench_linear_token_logprobs.py --vocab 32000 --hidden 512 --tokens 256 --repeats 2
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

# The peak-RSS helpers are bench_token_logprobs.py's; this folder is on the path when a page
# loads this file by its location, not only when it runs as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_token_logprobs import _reset_peak, _rss_kib

ROUTES = ("naive", "token_logprobs", "linear_token_logprobs")
LABELS = {
    "naive": "hidden @ W.T, log_softmax + gather",
    "token_logprobs": "hidden @ W.T, token_logprobs",
    "linear_token_logprobs": "linear_token_logprobs",
}


def child(
    route: str, tokens: int, hidden_size: int, vocab: int, repeats: int, seed: int, chunk_size: int | None
) -> dict:
    import torch

    from nemo_rl_theory import linear_token_logprobs, token_logprobs

    def naive(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(h @ w.T, dim=-1).gather(-1, y[..., None]).squeeze(-1)

    def via_token_logprobs(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return token_logprobs(h @ w.T, y)

    def linear(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return linear_token_logprobs(h, w, y, chunk_size=chunk_size)

    fn = {"naive": naive, "token_logprobs": via_token_logprobs, "linear_token_logprobs": linear}[route]
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, tokens, hidden_size, generator=gen).requires_grad_()
    # Unit-variance logits, as a trained LM head gives roughly.
    weight = (torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5).requires_grad_()
    targets = torch.randint(0, vocab, (1, tokens), generator=gen)
    upstream = torch.randn(1, tokens, generator=gen)
    baseline_kib = _rss_kib("VmRSS")
    grad_bytes = (hidden.numel() + weight.numel()) * 4
    logits_bytes = tokens * vocab * 4

    times = []
    peaks = []
    for _ in range(repeats + 1):  # the first step warms up and is not timed
        hidden.grad = None
        weight.grad = None
        _reset_peak()
        start = time.perf_counter()
        out = fn(hidden, weight, targets)
        (out * upstream).sum().backward()
        times.append(time.perf_counter() - start)
        peaks.append(_rss_kib("VmHWM"))
        del out
    peak_bytes = (max(peaks[1:]) - baseline_kib) * 1024 - grad_bytes
    return {
        "route": route,
        "median_s": statistics.median(times[1:]),
        "min_s": min(times[1:]),
        "peak_bytes": peak_bytes,
        "logits_bytes": logits_bytes,
        "peak_over_logits": peak_bytes / logits_bytes,
        "grad_checksum": float(hidden.grad.double().abs().sum() + weight.grad.double().abs().sum()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024, help="N = B*T positions")
    parser.add_argument("--hidden", type=int, default=1024, help="H, the hidden size")
    parser.add_argument("--vocab", type=int, default=128256, help="V, the vocabulary size")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--chunk-size", type=int, default=None, help="linear_token_logprobs' chunk_size")
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--child", choices=ROUTES, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = child(args.child, args.tokens, args.hidden, args.vocab, args.repeats, args.seed, args.chunk_size)
        print(json.dumps(result))
        return

    load_before = os.getloadavg()
    results = []
    for route in args.routes:
        cmd = [sys.executable, __file__, "--child", route, "--tokens", str(args.tokens), "--hidden", str(args.hidden)]
        cmd += ["--vocab", str(args.vocab), "--repeats", str(args.repeats), "--seed", str(args.seed)]
        if args.chunk_size is not None:
            cmd += ["--chunk-size", str(args.chunk_size)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    load_after = os.getloadavg()

    first = results[0]
    gib = 1024**3
    print(
        f"linear_token_logprobs benchmark: N = B*T = {args.tokens}, H = {args.hidden}, V = {args.vocab}, "
        f"float32, {first['threads']} threads, torch {first['torch']}; logits = {first['logits_bytes'] / gib:.3f} GiB; "
        f"forward + backward (hidden and weight), median (min) of {args.repeats}; "
        f"1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    )
    print()
    naive = next((r for r in results if r["route"] == "naive"), None)
    header = f"| {'route':<36} | {'time (s)':>17} | {'time / naive':>12} | {'peak above (GiB)':>16} "
    print(header + f"| {'peak / logits':>13} |")
    print(f"|{'-' * 38}|{'-' * 19}|{'-' * 14}|{'-' * 18}|{'-' * 15}|")
    for r in results:
        ratio = f"{r['median_s'] / naive['median_s']:.2f}x" if naive else "-"
        times = f"{r['median_s']:.3f} ({r['min_s']:.3f})"
        print(
            f"| {LABELS[r['route']]:<36} | {times:>17} | {ratio:>12} | {r['peak_bytes'] / gib:>16.3f} "
            f"| {r['peak_over_logits']:>12.3f}x |"
        )
    print()
    checksums = [r["grad_checksum"] for r in results]
    spread = (max(checksums) - min(checksums)) / max(checksums)
    print(f"gradient checksums agree to a relative {spread:.1e}")
    linear = next((r for r in results if r["route"] == "linear_token_logprobs"), None)
    if naive and linear:
        time_ratio = linear["median_s"] / naive["median_s"]
        print(
            f"targets: peak {linear['peak_over_logits']:.3f}x logits (<= 0.25x: "
            f"{'met' if linear['peak_over_logits'] <= 0.25 else 'missed'}), time {time_ratio:.2f}x naive "
            f"(<= 1.5x: {'met' if time_ratio <= 1.5 else 'missed'}; 4/3 is the floor for recomputing the logits)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2))


if __name__ == "__main__":
    main()

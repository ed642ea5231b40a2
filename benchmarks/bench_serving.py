"""Latency and throughput of the toy server (``nemo_rl_theory.serving.app``) over loopback HTTP.

The issue's budget: a 16-token completion served in <= 20 ms median on this machine. Rows:

* ``engine``: :func:`~nemo_rl_theory.serving.sampling.generate_completion` alone, in-process (the
  floor the HTTP path adds to);
* ``http``: one client, ``POST /v1/completions`` with ``max_tokens=16`` and ``ignore_eos`` (so
  every completion has exactly 16 tokens), through uvicorn on 127.0.0.1 and an ``httpx`` client
  with a kept-alive connection;
* ``concurrent C``: ``C`` client threads, each its own connection, ``--requests`` requests each:
  throughput (requests/s, generated tokens/s) and the latency median / p95 as clients see it.

The server serialises the model (one lock), so throughput should stay near ``1 / engine time``
while latency grows with ``C`` (Little's law: ``L = lambda W``, checked in the last column).

    python benchmarks/bench_serving.py                       # 2 torch threads, 200 timed requests
    python benchmarks/bench_serving.py --threads 1 --requests 100 --clients 1 4 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import torch

from nemo_rl_theory.serving.app import create_app, run_server_in_thread, tokenize
from nemo_rl_theory.serving.sampling import SamplingParams, generate_completion
from nemo_rl_theory.toy import make_policy, sft_policy
from nemo_rl_theory.toy.tasks import Task

PROMPT = "<bos> 3 1 4 1 |"
BODY = {"prompt": PROMPT, "max_tokens": 16, "ignore_eos": True, "temperature": 1.0}
BUDGET_S = 0.020


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per row (default 200)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrency levels")
    parser.add_argument("--sft-steps", type=int, default=0, help="SFT the policy first (0: untrained weights)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = sft_policy(Task("reverse", 4), steps=args.sft_steps) if args.sft_steps else make_policy(0)
    policy.eval()
    prompt_ids = tokenize(PROMPT)
    params = SamplingParams()

    @torch.no_grad()  # as the server runs it: no autograd graph in the floor either
    def engine_once(seed: int) -> None:
        tokens, _, _ = generate_completion(
            policy,
            [prompt_ids],
            params,
            max_tokens=16,
            generator=torch.Generator().manual_seed(seed),
            stop_token_ids=(),
        )
        assert len(tokens[0]) == 16

    for seed in range(10):
        engine_once(seed)
    engine = []
    for seed in range(args.requests):
        start = time.perf_counter()
        engine_once(seed)
        engine.append(time.perf_counter() - start)

    app = create_app(policy)
    rows = []
    with run_server_in_thread(app) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            for seed in range(20):  # warm-up: connection, first-call allocations
                client.post("/v1/completions", json={**BODY, "seed": seed}).raise_for_status()
            http = []
            for seed in range(args.requests):
                start = time.perf_counter()
                r = client.post("/v1/completions", json={**BODY, "seed": seed})
                http.append(time.perf_counter() - start)
                assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16

        def client_run(k: int, count: int) -> list[float]:
            times = []
            with httpx.Client(base_url=url, timeout=60) as c:
                c.get("/health")
                for i in range(count):
                    start = time.perf_counter()
                    r = c.post("/v1/completions", json={**BODY, "seed": 1000 * k + i})
                    times.append(time.perf_counter() - start)
                    assert r.status_code == 200, r.text
            return times

        for clients in args.clients:
            per_client = max(1, args.requests // clients)
            with ThreadPoolExecutor(clients) as pool:
                start = time.perf_counter()
                latencies = [t for ts in pool.map(client_run, range(clients), [per_client] * clients) for t in ts]
                wall = time.perf_counter() - start
            rows.append((clients, len(latencies), wall, latencies))

    print(f"torch {torch.__version__}, {args.threads} torch thread(s), {args.requests} timed requests per row")
    print("16-token completions (max_tokens=16, ignore_eos), prompt of 6 tokens, temperature 1\n")
    print("| case | requests/s | tokens/s | median ms | p95 ms | Little L = lambda W |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, times in (("engine (in-process)", engine), ("http, 1 client, sequential", http)):
        rate = 1 / statistics.mean(times)
        print(
            f"| {name} | {rate:.0f} | {16 * rate:.0f} | {1e3 * statistics.median(times):.2f} "
            f"| {1e3 * quantile(times, 0.95):.2f} | |"
        )
    for clients, count, wall, latencies in rows:
        rate = count / wall
        little = rate * statistics.mean(latencies)  # mean requests in the system; ~ clients when closed-loop
        print(
            f"| http, {clients} concurrent clients | {rate:.0f} | {16 * rate:.0f} | "
            f"{1e3 * statistics.median(latencies):.2f} | {1e3 * quantile(latencies, 0.95):.2f} | {little:.2f} |"
        )
    median = statistics.median(http)
    verdict = "within" if median <= BUDGET_S else "OVER"
    print(
        f"\nmedian latency of a 16-token completion over loopback: {1e3 * median:.2f} ms ({verdict} the 20 ms budget)"
    )


if __name__ == "__main__":
    main()

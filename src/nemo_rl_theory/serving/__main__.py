"""``python -m nemo_rl_theory.serving``: serve a toy policy over the OpenAI completions API.

    python -m nemo_rl_theory.serving                       # SFT 100 steps, serve on 127.0.0.1:8000
    python -m nemo_rl_theory.serving --port 8001 --checkpoint /tmp/toy.pt   # train once, then reload
    curl -s 127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"prompt": "<bos> 3 1 4 1 |", "max_tokens": 8, "temperature": 0, "logprobs": 1}'

It serves until interrupted (Ctrl-C), or until ``--max-requests`` completions have been answered
or ``--duration-s`` seconds have passed (the bounds tests use to see it stop by itself).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nemo_rl_theory.serving.app import serve


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nemo_rl_theory.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind, 1-65535 (default 8000)")
    parser.add_argument("--steps", type=int, default=100, help="SFT steps when training (default 100)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="state-dict file: loaded if it exists, else written after training",
    )
    parser.add_argument(
        "--task", default="reverse", choices=("copy", "reverse", "add"), help="toy task (default reverse)"
    )
    parser.add_argument("--difficulty", type=int, default=4, help="task difficulty n (default 4)")
    parser.add_argument("--max-requests", type=int, default=None, help="stop after this many completions")
    parser.add_argument("--duration-s", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be in [1, 65535], got {args.port}")
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: --host {args.host} is not loopback; the server is reachable from the network", file=sys.stderr)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.max_requests is not None and args.max_requests < 1:
        parser.error(f"--max-requests must be >= 1, got {args.max_requests}")
    if args.duration_s is not None and not args.duration_s > 0:
        parser.error(f"--duration-s must be > 0, got {args.duration_s}")
    try:
        serve(
            host=args.host,
            port=args.port,
            steps=args.steps,
            checkpoint=args.checkpoint,
            kind=args.task,
            difficulty=args.difficulty,
            max_requests=args.max_requests,
            duration_s=args.duration_s,
            log_level=args.log_level,
        )
    except KeyboardInterrupt:  # pragma: no cover - uvicorn handles SIGINT itself; a second one lands here
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

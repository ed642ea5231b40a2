r"""An OpenAI-compatible HTTP server for the toy policy: FastAPI + uvicorn + ``prometheus_client``.

:func:`create_app` returns the ASGI app; :func:`run_server_in_thread` serves it on loopback for
tests, pages and benchmarks; :func:`serve` is what ``python -m nemo_rl_theory.serving`` (``nox -s
serve``) runs. Endpoints:

* ``POST /v1/completions``: the legacy completions schema as vLLM serves it (vLLM,
  ``vllm/entrypoints/openai/completion/protocol.py``): ``model``, ``prompt``, ``max_tokens``
  (default 16), ``temperature`` (default 1; 0 is greedy, and ``(0, 0.01)`` is served as 0.01, as
  vLLM's ``SamplingParams`` does), ``top_p`` (default 1), ``top_k`` (default 0 = off; -1 also
  means off), ``min_p`` (default 0), ``n`` (default 1), ``seed`` (-1 or absent: a random one, as
  vLLM), ``logprobs``, ``stop``, ``echo`` (false only), and vLLM's ``ignore_eos`` and
  ``return_token_ids``. Sampling goes through
  :mod:`nemo_rl_theory.serving.sampling`, the functions the trainer shares, and the returned
  ``choices[i].logprobs.token_logprobs`` are the *processed* log-probs (vLLM's
  ``logprobs_mode="processed_logprobs"``, which NeMo RL's Megatron generation worker sets:
  ``nemo_rl/models/generation/megatron/megatron_worker.py`` at 7ea279a), i.e. those of the
  temperature-scaled, filtered distribution the token was drawn from.
* ``GET /v1/models``, ``GET /health`` (200, empty body, as vLLM), ``GET /metrics`` (Prometheus
  text exposition of the app's own ``CollectorRegistry``).

Prompts. The toy has no sub-word tokenizer: a prompt string is the rendered task prompt of
:func:`nemo_rl_theory.toy.tasks.render`, e.g. ``"<bos> 3 1 4 1 |"``, read back by
:func:`tokenize` (whitespace between tokens optional; an unknown token is a 400 naming the token
and its position). As vLLM's ``add_special_tokens=True``, a string prompt that does not start
with ``<bos>`` gets one; token-id prompts are used as given. ``prompt`` may also be a list of
token ids, or a list of strings or of token-id lists (one completion group of ``n`` choices per
prompt, choice ``index = i * n + j``). The completion ``text`` is the generated tokens' names
joined by spaces, special tokens (``<eos>``, ``<bos>``, ``<pad>``) skipped as vLLM's
``skip_special_tokens=True`` does; ``logprobs.tokens`` lists every generated token, ``<eos>``
included, with its log-prob (the trainer's mask includes ``EOS`` too).

Stop strings follow vLLM's ``check_stop_strings`` (``vllm/v1/engine/detokenizer.py``): the first
token after which one of them appears ends the completion (kept and counted), the text is cut
before it, and among stop strings completed by the same token the request's order decides.

Errors. Every client mistake answers 400 (404 for an unknown ``model``, as vLLM and OpenAI do;
413 for a body over :data:`MAX_BODY_BYTES`) with vLLM's ``ErrorResponse`` shape,
``{"error": {"message", "type", "param", "code"}}`` (``code`` the HTTP status), the message naming
the field and its allowed range, ``param`` the field (``null`` for a body that is not a JSON
object). ``type`` is OpenAI's ``"invalid_request_error"`` (vLLM writes ``"BadRequestError"`` /
``"NotFoundError"``). Two choices differ from vLLM on purpose: an unknown field is a 400 (vLLM
logs and ignores it, so a misspelt ``max_token`` would be served silently), and types are
strict (``"0.5"`` is not a number). As FastAPI, hence vLLM, the body is read as JSON only
without a ``Content-Type`` or with a JSON one (``curl -d`` without ``-H`` sends a form type: a
400). ``prompt`` + ``max_tokens`` must fit ``max_model_len`` (``max_tokens`` ``null`` or absent
is 16, as in vLLM), and one request may ask for at most :data:`MAX_BATCH_TOKENS` tokens
(``n * len(prompts) * max_tokens``), so no client holds the one engine for long. The server
never answers 500 to a client and keeps serving (a fuzz test in ``tests/test_serving_app.py``).

Metrics (names are stable; the alert rules of the monitoring page use them):

* ``toy_http_requests_total{path, status}``: requests answered, by route and HTTP status;
* ``toy_e2e_request_latency_seconds``: histogram of the end-to-end latency of successful
  ``/v1/completions`` requests (vLLM's ``vllm:e2e_request_latency_seconds``), buckets
  :data:`LATENCY_BUCKETS`;
* ``toy_generation_tokens_total`` and ``toy_prompt_tokens_total``: tokens generated (all
  choices, ``EOS`` included) and prompt tokens processed (vLLM's ``vllm:generation_tokens_total``,
  ``vllm:prompt_tokens_total``);
* ``toy_requests_in_flight``: ``/v1/completions`` requests received and not yet answered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn

from nemo_rl_theory.serving import sampling
from nemo_rl_theory.toy.tasks import BOS, EOS, PAD, TOKEN_NAMES, VOCAB_SIZE

__all__ = [
    "DEFAULT_MAX_MODEL_LEN",
    "LATENCY_BUCKETS",
    "MAX_BATCH_TOKENS",
    "MAX_BODY_BYTES",
    "MAX_N",
    "MAX_PROMPTS",
    "MIN_TEMPERATURE",
    "CompletionRequest",
    "CompletionResponse",
    "create_app",
    "detokenize",
    "load_policy",
    "run_server_in_thread",
    "serve",
    "tokenize",
]

#: Prompt plus completion tokens a request may reach unless ``create_app(max_model_len=...)``.
DEFAULT_MAX_MODEL_LEN = 128
#: Most choices per prompt and most prompts per request (vLLM caps the prompt list too).
MAX_N = 64
MAX_PROMPTS = 64
#: Most tokens one request may ask for, ``n * len(prompts) * max_tokens``: the engine serves one
#: request at a time, so this bounds how long one client holds it (under 2 s on this 2-core box,
#: with ``logprobs``; its response is then a few MB).
MAX_BATCH_TOKENS = 8192
#: Largest request body read (413 beyond); the largest valid request is a few hundred kB.
MAX_BODY_BYTES = 1 << 20
#: Upper bounds (seconds) of the latency histogram's buckets; 0.02 is the issue's latency budget.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: vLLM's ``_MAX_TEMP``: a temperature in ``(0, MIN_TEMPERATURE)`` is served as ``MIN_TEMPERATURE``.
MIN_TEMPERATURE = 0.01
#: vLLM's floor for a log-prob that JSON cannot carry (-inf): ``max(logprob, -9999.0)``.
LOGPROB_FLOOR = -9999.0

_LOG = logging.getLogger(__name__)
_SPECIAL = frozenset({EOS, BOS, PAD})
#: What each field accepts, as the 400 messages state it.
_FIELD_RULES = {
    "model": "a string (the served model's id)",
    "max_tokens": "an integer >= 1 (prompt + max_tokens <= max_model_len)",
    "temperature": "a finite number >= 0 (0 = greedy)",
    "top_p": "a number in (0, 1]",
    "top_k": "an integer, -1 or 0 (off) or >= 1",
    "min_p": "a number in [0, 1]",
    "n": f"an integer in [1, {MAX_N}]",
    "seed": "an integer (64-bit signed; -1 or null: random)",
    "logprobs": f"null, -1 (all) or an integer in [0, {VOCAB_SIZE}]",
    "echo": "false (the prompt is not echoed)",
    "stream": "false (responses are not streamed)",
    "return_token_ids": "a boolean",
    "ignore_eos": "a boolean",
    "user": "a string",
}
_KNOWN_PATHS = ("/v1/completions", "/v1/models", "/health", "/metrics")
_TOKEN_ID = {name: i for i, name in enumerate(TOKEN_NAMES)}
_NAMES_PATTERN = "|".join(re.escape(n) for n in sorted(TOKEN_NAMES, key=len, reverse=True))
# whitespace taken atomically (the look-ahead idiom: no backtracking, so linear time; Python 3.10
# has no possessive quantifier), then a token name or the end of the text
_TOKEN_RE = re.compile(r"(?=(?P<space>\s*))(?P=space)(?:(?P<name>" + _NAMES_PATTERN + r")|\Z)")
_WORD_RE = re.compile(r"\s*(\S*)")
_VOCAB_TEXT = " ".join(TOKEN_NAMES[:PAD])


# ----------------------------------------------------------------------------- tokenizer


def tokenize(text: str, *, max_tokens: int | None = None) -> list[int]:
    """Token ids of a rendered toy prompt (the inverse of :func:`~nemo_rl_theory.toy.tasks.render`).

    Tokens are the names ``0``-``9 + = | <eos> <bos> <pad>``; whitespace between them is optional
    (``"<bos>31|"`` reads as ``"<bos> 3 1 |"``). ``<pad>`` is rejected: it is padding, not text.
    ``max_tokens`` stops the scan early (``ValueError``) once the text holds more tokens than
    that, so that a huge prompt costs no more than the limit the server applies anyway.

    Raises:
        ValueError: naming the first unknown token (the run of characters up to the next
            whitespace, shortened to 20 characters) and its position (character offset and
            token index); or more than ``max_tokens`` tokens.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    ids: list[int] = []
    at, size = 0, len(text)
    while at < size:
        match = _TOKEN_RE.match(text, at)
        if match is None:
            word = _WORD_RE.match(text, at)  # the run of non-space characters there
            shown = word.group(1) if len(word.group(1)) <= 20 else word.group(1)[:20] + "..."
            raise ValueError(
                f"unknown token {shown!r} at character {word.start(1)} (token {len(ids)}); "
                f"the vocabulary is: {_VOCAB_TEXT}"
            )
        at = match.end()
        name = match.group("name")
        if name is None:  # trailing whitespace
            break
        token = _TOKEN_ID[name]
        if token == PAD:
            raise ValueError(
                f"token '<pad>' at character {match.start('name')} (token {len(ids)}) is padding and cannot appear "
                "in a prompt"
            )
        ids.append(token)
        if max_tokens is not None and len(ids) > max_tokens:
            raise ValueError(f"the text holds more than {max_tokens} tokens")
    return ids


def detokenize(tokens: Sequence[int], *, skip_special_tokens: bool = True) -> str:
    """The names of ``tokens`` joined by single spaces (``<eos>``, ``<bos>``, ``<pad>`` skipped by default)."""
    return " ".join(TOKEN_NAMES[t] for t in tokens if not (skip_special_tokens and t in _SPECIAL))


# ----------------------------------------------------------------------------- schema

_TokenId = Annotated[int, Field(strict=True)]


class CompletionRequest(BaseModel):
    """The body of ``POST /v1/completions`` (vLLM's legacy completions schema, the toy's subset).

    Unknown fields are rejected (OpenAI answers "Unrecognized request argument"; vLLM ignores
    them); types are strict (``"0.5"`` is not a number, ``true`` is not an int). Ranges are
    checked by the handler so that the message states the allowed range.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str | None = None
    prompt: str | list[_TokenId] | list[str] | list[list[_TokenId]]
    max_tokens: int | None = 16
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    n: int = 1
    seed: int | None = None
    logprobs: int | None = None
    stop: str | list[str] | None = None
    echo: bool | None = False
    stream: bool | None = False
    return_token_ids: bool | None = None
    ignore_eos: bool = False
    user: str | None = None


class CompletionLogProbs(BaseModel):
    """Per-token log-probs of one choice (OpenAI's legacy ``logprobs`` object)."""

    text_offset: list[int]
    token_logprobs: list[float]
    tokens: list[str]
    top_logprobs: list[dict[str, float]]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: Literal["stop", "length"]
    stop_reason: str | None = None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    """The body answering ``POST /v1/completions``."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo


class _ClientError(Exception):
    def __init__(self, message: str, param: str | None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


def _error(status: int, message: str, param: str | None, kind: str = "invalid_request_error") -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def _describe_validation(err: ValidationError) -> tuple[str, str | None]:
    first = err.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return f"the request body is not valid JSON: {first['msg']}", None
    if first["type"] in ("model_type", "dict_type"):
        return "the request body must be a JSON object", None
    loc = [str(p) for p in first["loc"]]
    # a union (prompt, stop) reports one error per member; name the field and its accepted types
    field = loc[0] if loc else None
    expected = {
        "prompt": "a string, a list of token ids, or a list of strings or of token-id lists",
        "stop": "a string or a list of strings",
    }
    if first["type"] == "missing":
        return f"{field} is required", field
    if first["type"] == "extra_forbidden":
        return f"unrecognized request argument: {_clip(field or '')}", _clip(field or "")
    if field in expected:
        return f"{field} must be {expected[field]}", field
    rule = _FIELD_RULES.get(field or "")
    got = first.get("input")
    if rule is not None:
        return f"{field} must be {rule}, got {_shorten(got)}", field
    return f"{field}: {first['msg']} (got {_shorten(got)})", field


# ----------------------------------------------------------------------------- metrics


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "toy_http_requests", "HTTP requests answered, by route and status.", ["path", "status"], registry=registry
        )
        self.latency = Histogram(
            "toy_e2e_request_latency_seconds",
            "End-to-end latency of successful /v1/completions requests.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.generation_tokens = Counter(
            "toy_generation_tokens", "Tokens generated, all choices, EOS included.", registry=registry
        )
        self.prompt_tokens = Counter("toy_prompt_tokens", "Prompt tokens processed.", registry=registry)
        self.in_flight = Gauge(
            "toy_requests_in_flight", "/v1/completions requests received and not yet answered.", registry=registry
        )


class _MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP response by route and status (unknown routes as "other")."""

    def __init__(self, app: Any, metrics: _Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        label = path if path in _KNOWN_PATHS else "other"
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(path=label, status=str(status["code"])).inc()


# ----------------------------------------------------------------------------- the app


def _prompts(prompt: Any, limit: int) -> list[list[int]]:
    """The request's prompts as token-id lists; each must be non-empty and shorter than ``limit``."""
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif len(prompt) == 0:
        raise _ClientError("prompt must not be empty", "prompt")
    elif isinstance(prompt[0], int):
        items = [prompt]
    else:
        items = list(prompt)
    if len(items) > MAX_PROMPTS:
        raise _ClientError(f"prompt must hold at most {MAX_PROMPTS} prompts, got {len(items)}", "prompt")
    out = []
    for i, item in enumerate(items):
        where = "prompt" if len(items) == 1 else f"prompt[{i}]"
        too_long = f"{where} must have fewer than max_model_len = {limit} tokens (<bos> included)"
        if isinstance(item, str):
            try:
                ids = tokenize(item, max_tokens=limit)
            except ValueError as exc:
                if str(exc).startswith("the text holds more than"):
                    raise _ClientError(f"{too_long}, got more than {limit}", "prompt") from None
                raise _ClientError(f"{where}: {exc}", "prompt") from None
            if not ids:
                raise _ClientError(f"{where} must not be empty", "prompt")
            if ids[0] != BOS:
                ids = [BOS, *ids]
        else:
            ids = list(item)
            if not ids:
                raise _ClientError(f"{where} must not be empty", "prompt")
            if len(ids) < limit:  # a long list is refused below without scanning it
                for pos, token in enumerate(ids):
                    if not 0 <= token < VOCAB_SIZE or token == PAD:
                        raise _ClientError(
                            f"{where}: unknown token id {_shorten(token)} at position {pos}; token ids must be in "
                            f"[0, {VOCAB_SIZE - 1}] except {PAD} (<pad>)",
                            "prompt",
                        )
        if len(ids) >= limit:
            raise _ClientError(f"{too_long}, got {len(ids)}", "prompt")
        out.append(ids)
    return out


def _clip(text: str, size: int = 60) -> str:
    return text if len(text) <= size else text[: size - 3] + "..."


def _shorten(value: object, size: int = 60) -> str:
    """``value`` as the error messages quote it: JSON where possible, at most ``size`` characters."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= size else text[: size - 3] + "..."


def _check_range(name: str, value: float, ok: bool, allowed: str) -> None:
    if not ok:
        raise _ClientError(f"{name} must be {allowed}, got {_shorten(value)}", name)


def _sampling_params(req: CompletionRequest) -> sampling.SamplingParams:
    temperature = 1.0 if req.temperature is None else float(req.temperature)
    top_p = 1.0 if req.top_p is None else float(req.top_p)
    top_k = 0 if req.top_k is None else req.top_k
    min_p = 0.0 if req.min_p is None else float(req.min_p)
    _check_range("temperature", temperature, temperature >= 0, ">= 0 (0 = greedy)")
    _check_range("top_p", top_p, 0 < top_p <= 1, "in (0, 1]")
    _check_range("top_k", top_k, top_k >= -1, "-1 or 0 (off) or >= 1")
    _check_range("min_p", min_p, 0 <= min_p <= 1, "in [0, 1]")
    # vLLM's SamplingParams.__post_init__ raises 0 < temperature < 0.01 to 0.01 (_MAX_TEMP), so only
    # temperature 0 is greedy there; served log-probs are then those of temperature 0.01
    temperature = max(temperature, MIN_TEMPERATURE) if temperature > 0 else 0.0
    try:
        return sampling.SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p)
    except ValueError as exc:  # the library's own check, should the two ever disagree
        message = str(exc)
        param = next((f for f in ("temperature", "top_p", "top_k", "min_p") if f in message), None)
        raise _ClientError(message, param) from None


def _stop_strings(stop: str | list[str] | None) -> list[str]:
    strings = [stop] if isinstance(stop, str) else list(stop or [])
    if len(strings) > 4:
        raise _ClientError(f"stop must hold at most 4 strings, got {len(strings)}", "stop")
    if any(s == "" for s in strings):
        raise _ClientError("stop strings must not be empty", "stop")
    return strings


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or ``None`` as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _clamp(x: float) -> float:
    return x if x >= LOGPROB_FLOOR else LOGPROB_FLOOR


def create_app(
    policy: nn.Module,
    *,
    model_name: str = "toy-reverse",
    max_model_len: int | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The ASGI app serving ``policy`` (a :class:`~nemo_rl_theory.toy.policy.ToyPolicy`).

    Args:
        policy: the model; put in eval mode and only read (requests take a lock around it).
        model_name: the id ``/v1/models`` lists and requests must name (or omit).
        max_model_len: most prompt plus completion tokens a request may reach (default
            :data:`DEFAULT_MAX_MODEL_LEN`); ``max_tokens`` beyond it is a 400.
        registry: where the metrics live; a fresh ``CollectorRegistry`` by default, so any number
            of apps can coexist in one process (``app.state.registry``).

    ``app.state`` also holds ``completions_answered`` (count of ``/v1/completions`` responses),
    which :func:`serve` uses to stop after ``max_requests``, and ``engine_lock``, the
    ``threading.Lock`` every generation holds (one request at a time uses the model; the others
    wait, counted by ``toy_requests_in_flight``).
    """
    if not isinstance(policy, nn.Module):
        raise TypeError(f"policy must be a torch.nn.Module, got {type(policy).__name__}")
    limit = DEFAULT_MAX_MODEL_LEN if max_model_len is None else max_model_len
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
        raise ValueError(f"max_model_len must be an int >= 2, got {max_model_len!r}")
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a non-empty str, got {model_name!r}")
    registry = CollectorRegistry() if registry is None else registry
    metrics = _Metrics(registry)
    policy.eval()
    lock = threading.Lock()
    created = int(time.time())

    app = FastAPI(title="nemo-rl-theory toy server", version="1", docs_url=None, redoc_url=None)
    app.state.registry = registry
    app.state.policy = policy
    app.state.model_name = model_name
    app.state.max_model_len = limit
    app.state.completions_answered = 0
    app.state.engine_lock = lock
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", None)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:  # a bug, never a client mistake
        return _error(500, f"internal server error: {type(exc).__name__}", None, kind="internal_server_error")

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict:
        card = {
            "id": model_name,
            "object": "model",
            "created": created,
            "owned_by": "nemo-rl-theory",
            "root": model_name,
            "parent": None,
            "max_model_len": limit,
        }
        return {"object": "list", "data": [card]}

    def run(prompts: list[list[int]], params: sampling.SamplingParams, req: CompletionRequest) -> dict:
        n = req.n
        rows = [p for p in prompts for _ in range(n)]
        # vLLM: seed -1 (like none) draws a fresh one
        seed = req.seed if req.seed is not None and req.seed != -1 else secrets.randbits(63)
        generator = torch.Generator().manual_seed(seed)
        with lock, torch.no_grad():
            tokens, logprobs, finish = sampling.generate_completion(
                policy,
                rows,
                params,
                max_tokens=req.max_tokens,
                generator=generator,
                stop_token_ids=() if req.ignore_eos else (EOS,),
            )
            top = _top_logprobs(rows, tokens, params, req.logprobs) if req.logprobs else None  # 0: sampled only
        stops = _stop_strings(req.stop)
        choices, generated = [], 0
        for index, (row, out, lps, reason) in enumerate(zip(rows, tokens, logprobs, finish, strict=True)):
            out = [int(t) for t in out]
            lps = [float(x) for x in lps]
            text, keep, stop_reason = _apply_stop(out, stops)
            if keep < len(out):
                out, lps, reason = out[:keep], lps[:keep], "stop"
            generated += len(out)
            choice: dict[str, Any] = {
                "index": index,
                "text": text,
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": stop_reason,
            }
            if req.logprobs is not None:
                steps = top[index][: len(out)] if top is not None else [{} for _ in out]
                for entry, token, x in zip(steps, out, lps, strict=True):  # the sampled token: the decode's value
                    entry[TOKEN_NAMES[token]] = _clamp(x)
                choice["logprobs"] = _logprobs_object(out, lps, steps)
            if req.return_token_ids:
                choice["token_ids"], choice["prompt_token_ids"] = out, row
            choices.append(choice)
        prompt_tokens = sum(len(p) for p in prompts)
        metrics.generation_tokens.inc(generated)
        metrics.prompt_tokens.inc(prompt_tokens)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": generated,
                "total_tokens": prompt_tokens + generated,
            },
        }

    def _top_logprobs(
        rows: list[list[int]], tokens: list, params: sampling.SamplingParams, k: int
    ) -> list[list[dict[str, float]]]:
        # one teacher-forced pass over prompt + completion gives every step's processed distribution
        out = []
        for row, gen in zip(rows, tokens, strict=True):
            gen = [int(t) for t in gen]
            if not gen:
                out.append([])
                continue
            seq = torch.tensor([row + gen[:-1]], dtype=torch.long)
            logits, _ = policy(seq)
            step_logits = logits[0, len(row) - 1 :]
            logp = torch.log_softmax(sampling.filter_logits(step_logits, params), dim=-1)
            count = min(k, VOCAB_SIZE)
            values, indices = logp.topk(count, dim=-1) if count else (logp[:, :0], logp[:, :0].long())
            steps = []
            for j, chosen in enumerate(gen):
                entry = {TOKEN_NAMES[int(i)]: _clamp(float(v)) for v, i in zip(values[j], indices[j], strict=True)}
                entry[TOKEN_NAMES[chosen]] = _clamp(float(logp[j, chosen]))
                steps.append(entry)
            out.append(steps)
        return out

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        metrics.in_flight.inc()
        start = time.perf_counter()
        try:
            content_type = request.headers.get("content-type", "")
            if content_type and not _is_json(content_type):
                # FastAPI (hence vLLM) reads the body as JSON only without a type or with a JSON one
                message = f"the request body must be JSON: Content-Type {_clip(content_type)!r} is not application/json"
                return _error(400, message, None)
            body = await _read_body(request, MAX_BODY_BYTES)
            if body is None:
                return _error(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", None)
            try:
                req = CompletionRequest.model_validate_json(body)
            except ValidationError as exc:
                message, param = _describe_validation(exc)
                return _error(400, message, param)
            try:
                if req.model is not None and req.model != model_name:
                    raise _ClientError(
                        f"The model `{_clip(req.model)}` does not exist; this server serves `{model_name}`.",
                        "model",
                        404,
                    )
                if req.stream:
                    raise _ClientError("stream must be false: this server does not stream", "stream")
                if req.echo:
                    raise _ClientError("echo must be false: this server does not echo the prompt", "echo")
                _check_range("n", req.n, 1 <= req.n <= MAX_N, f"in [1, {MAX_N}]")
                if req.logprobs is not None:
                    _check_range(
                        "logprobs", req.logprobs, -1 <= req.logprobs <= VOCAB_SIZE, f"-1 (all) or in [0, {VOCAB_SIZE}]"
                    )
                    if req.logprobs == -1:
                        req.logprobs = VOCAB_SIZE
                if req.seed is not None:
                    _check_range("seed", req.seed, -(2**63) <= req.seed < 2**63, "a 64-bit signed integer")
                _stop_strings(req.stop)
                params = _sampling_params(req)
                prompts = _prompts(req.prompt, limit)
                if req.max_tokens is None:  # vLLM: null means the default, 16
                    req.max_tokens = 16
                longest = max(len(p) for p in prompts)
                room = limit - longest
                _check_range(
                    "max_tokens",
                    req.max_tokens,
                    1 <= req.max_tokens <= room,
                    f"in [1, {room}] (max_model_len {limit} minus the longest prompt's {longest} tokens)",
                )
                work = req.n * len(prompts) * req.max_tokens
                if work > MAX_BATCH_TOKENS:
                    raise _ClientError(
                        f"n * (number of prompts) * max_tokens must be <= {MAX_BATCH_TOKENS}, got "
                        f"{req.n} * {len(prompts)} * {req.max_tokens} = {work}; lower n, the prompts or max_tokens",
                        "n",
                    )
            except _ClientError as exc:
                return _error(exc.status, exc.message, exc.param)
            try:
                result = await run_in_threadpool(run, prompts, params, req)
            except Exception as exc:  # a server bug: logged here, answered as a 500 (the connection stays up)
                _LOG.exception("POST /v1/completions failed")
                return _error(500, f"internal server error: {type(exc).__name__}", None, kind="internal_server_error")
            response = JSONResponse(result)  # the body is serialised here: part of the latency
            metrics.latency.observe(time.perf_counter() - start)
            return response
        finally:
            metrics.in_flight.dec()
            app.state.completions_answered += 1

    return app


def _apply_stop(tokens: list[int], stops: list[str]) -> tuple[str, int, str | None]:
    """(text, tokens kept, the stop string hit): vLLM's stop-string check, token by token.

    As vLLM's ``StopChecker`` (``vllm/v1/engine/detokenizer.py``, ``check_stop_strings``): after
    each token the new text is searched for each stop string in the request's order; the first
    token that completes one ends the completion (that token is kept and counted, later ones are
    dropped) and the text is cut before the stop string (``include_stop_str_in_output=False``).
    So the stop string that *ends* first wins, not the one that starts first. Special tokens add
    no text; the toy's text joins token names with single spaces (trailing space dropped).
    """
    text = ""
    for j, token in enumerate(tokens):
        if token in _SPECIAL:
            continue
        added = (" " if text else "") + TOKEN_NAMES[token]
        text += added
        for stop in stops:
            at = text.find(stop, max(0, len(text) - len(added) - len(stop) + 1))
            if at != -1:
                return text[:at].rstrip(" "), j + 1, stop
    return text, len(tokens), None


def _logprobs_object(tokens: list[int], logprobs: list[float], top: list[dict[str, float]] | None) -> dict:
    offsets, position = [], 0
    for t in tokens:
        offsets.append(position)
        if t not in _SPECIAL:
            position += len(TOKEN_NAMES[t]) + 1
    return {
        "text_offset": offsets,
        "token_logprobs": [_clamp(x) for x in logprobs],
        "tokens": [TOKEN_NAMES[t] for t in tokens],
        "top_logprobs": top if top is not None else [{} for _ in tokens],
    }


# ----------------------------------------------------------------------------- running it


def _run_quietly(server: Any) -> None:
    # uvicorn ends a failed start-up (port taken) with sys.exit(1); in a thread that is just the end
    with contextlib.suppress(SystemExit):
        server.run()


@contextlib.contextmanager
def run_server_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int | None = None, timeout_s: float = 30.0
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a daemon thread; yields the base URL, stops the server on exit.

    For tests, pages and benchmarks: ``host`` must be a loopback address (``127.0.0.1``, ``::1``
    or ``localhost``; ``ValueError`` otherwise), so nothing is reachable from outside the
    machine. ``port=None`` takes a free port
    (:func:`~nemo_rl_theory.performance.distributed.free_port`; retried up to 3 times should
    another process take it first). Start-up is bounded by ``timeout_s`` seconds; on leaving the
    block, normally or by an exception, the server stops: requests still running get
    ``timeout_s`` seconds to finish (uvicorn's graceful shut-down) before they are cancelled,
    and the thread is joined (``RuntimeError`` if it has not ended within ``3 * timeout_s``).
    """
    import ipaddress

    import uvicorn

    from nemo_rl_theory.performance.distributed import free_port

    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"host must be a loopback address (127.0.0.1, ::1, localhost), got {host!r}")
    attempts = 3 if port is None else 1
    for attempt in range(attempts):
        chosen = free_port() if port is None else port
        config = uvicorn.Config(
            app,
            host=host,
            port=chosen,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=timeout_s,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=_run_quietly, args=(server,), name=f"uvicorn-{chosen}", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if server.started:
            break
        server.should_exit = True
        thread.join(timeout=timeout_s)
        if attempt == attempts - 1:
            raise RuntimeError(f"uvicorn did not start on {host}:{chosen} within {timeout_s} s")
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{chosen}"
    finally:
        server.should_exit = True
        thread.join(timeout=2 * timeout_s)  # the graceful phase takes at most timeout_s
        if thread.is_alive():  # pragma: no cover - a request handler that never returns
            server.force_exit = True
            thread.join(timeout=timeout_s)
            if thread.is_alive():
                raise RuntimeError(f"uvicorn on {host}:{chosen} did not stop within {3 * timeout_s} s")


def load_policy(
    *, checkpoint: str | None = None, steps: int = 100, kind: str = "reverse", difficulty: int = 4
) -> nn.Module:
    """The policy :func:`serve` serves: the state dict at ``checkpoint`` if that file exists, else
    :func:`~nemo_rl_theory.toy.trainers.sft_policy` after ``steps`` SFT steps on ``Task(kind,
    difficulty)`` (cached per process), saved to ``checkpoint`` when one is named.
    """
    import os

    from nemo_rl_theory.toy import Task, make_policy, sft_policy

    if checkpoint is not None and os.path.exists(checkpoint):
        policy = make_policy(0)
        policy.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        return policy
    policy = sft_policy(Task(kind, difficulty), steps=steps)
    if checkpoint is not None:
        torch.save(policy.state_dict(), checkpoint)
    return policy


def serve(
    policy: nn.Module | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    steps: int = 100,
    checkpoint: str | None = None,
    kind: str = "reverse",
    difficulty: int = 4,
    max_requests: int | None = None,
    duration_s: float | None = None,
    log_level: str = "info",
) -> None:
    """Serve a toy policy on ``host:port`` until interrupted (Ctrl-C), or until ``max_requests``
    ``/v1/completions`` requests have been answered, or ``duration_s`` seconds have passed.

    Without ``policy`` it loads one with :func:`load_policy` (``checkpoint``, ``steps``, ``kind``,
    ``difficulty``). The model is named ``toy-<kind>``.
    """
    import uvicorn

    if max_requests is not None and max_requests < 1:
        raise ValueError(f"max_requests must be >= 1, got {max_requests}")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if policy is None:
        policy = load_policy(checkpoint=checkpoint, steps=steps, kind=kind, difficulty=difficulty)
    app = create_app(policy, model_name=f"toy-{kind}")
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="off", timeout_graceful_shutdown=10
    )
    server = uvicorn.Server(config)
    start = time.monotonic()
    stop_watch = threading.Event()

    def watch() -> None:
        while not stop_watch.wait(0.05):
            if max_requests is not None and app.state.completions_answered >= max_requests:
                break
            if duration_s is not None and time.monotonic() - start >= duration_s:
                break
        server.should_exit = True

    watcher = threading.Thread(target=watch, name="serve-bounds", daemon=True)
    if max_requests is not None or duration_s is not None:
        watcher.start()
    shown = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
    print(f"serving {app.state.model_name} on http://{shown}:{port} (Ctrl-C stops)", flush=True)
    try:
        server.run()
    finally:
        stop_watch.set()

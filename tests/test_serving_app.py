"""The OpenAI-compatible toy server: schema, determinism, bad inputs, metrics, load, the CLI.

Every server here binds 127.0.0.1 on a free port, is bounded in time and is stopped by the test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from nemo_rl_theory.performance.distributed import free_port
from nemo_rl_theory.serving.app import (
    DEFAULT_MAX_MODEL_LEN,
    LATENCY_BUCKETS,
    MAX_BATCH_TOKENS,
    MAX_BODY_BYTES,
    CompletionResponse,
    _apply_stop,
    create_app,
    detokenize,
    load_policy,
    run_server_in_thread,
    serve,
    tokenize,
)
from nemo_rl_theory.serving.sampling import SamplingParams, recompute_logprobs
from nemo_rl_theory.toy import BOS, EOS, PAD, Task, make_policy, render
from nemo_rl_theory.toy.tasks import TOKEN_NAMES

PROMPT = "<bos> 3 1 4 1 |"


@pytest.fixture(scope="module")
def policy() -> torch.nn.Module:
    return make_policy(0)


@pytest.fixture(scope="module")
def server(policy):
    app = create_app(policy)
    with run_server_in_thread(app, timeout_s=30) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, app


def complete(client: httpx.Client, **body) -> dict:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def scrape(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


# ----------------------------------------------------------------------------- tokenizer


def test_tokenize_inverts_render():
    problems = Task("add", 3).sample(8, torch.Generator().manual_seed(0))
    for row in problems.prompts:
        text = render(row)
        ids = tokenize(text)
        assert ids == [t for t in row.tolist() if t != PAD]
        assert render(torch.tensor(ids)) == text
    assert tokenize("<bos>31|") == tokenize("<bos> 3 1 |") == [BOS, 3, 1, 12]
    assert tokenize("  ") == []
    assert detokenize([1, 2, EOS]) == "1 2"
    assert detokenize([1, 2, EOS], skip_special_tokens=False) == "1 2 <eos>"


@given(st.lists(st.sampled_from([t for t in range(len(TOKEN_NAMES)) if t != PAD]), max_size=20))
def test_tokenize_round_trips_any_token_row(ids):
    names = [TOKEN_NAMES[t] for t in ids]
    assert tokenize(" ".join(names)) == ids
    assert tokenize("".join(names)) == ids  # the names are prefix-free: no separator needed
    assert detokenize(ids, skip_special_tokens=False) == " ".join(names)


def test_tokenize_names_unknown_token_and_position():
    with pytest.raises(ValueError, match=r"unknown token 'x7' at character 8 \(token 2\)"):
        tokenize("<bos> 3 x7 |")
    with pytest.raises(ValueError, match=r"'<pad>' at character 2 \(token 1\)"):
        tokenize("1 <pad>")
    with pytest.raises(TypeError, match="text must be a str"):
        tokenize([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown token 'y{20}\.\.\.' at character 3 \(token 1\)"):
        tokenize("1 \u3000" + "y" * 1000)  # any Unicode space separates; a long unknown run is shortened
    assert tokenize("1 2", max_tokens=2) == [1, 2]
    with pytest.raises(ValueError, match="more than 2 tokens"):
        tokenize("1 2 3 4 5 6", max_tokens=2)


# ----------------------------------------------------------------------------- schema


def test_completion_schema_and_usage(server, policy):
    client, _ = server
    body = complete(
        client, model="toy-reverse", prompt=PROMPT, max_tokens=6, n=3, seed=7, logprobs=2, return_token_ids=True
    )
    CompletionResponse.model_validate(body)  # types and required fields
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "toy-reverse" and isinstance(body["created"], int)
    prompt_ids = tokenize(PROMPT)
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    total = 0
    for c in choices:
        ids = c["token_ids"]
        assert c["prompt_token_ids"] == prompt_ids
        assert 1 <= len(ids) <= 6
        assert c["text"] == detokenize(ids)
        lp = c["logprobs"]
        assert lp["tokens"] == [TOKEN_NAMES[t] for t in ids]
        assert len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == len(ids)
        assert all(isinstance(x, float) and x <= 0.0 for x in lp["token_logprobs"])
        for name, offset in zip(lp["tokens"], lp["text_offset"], strict=True):
            if name not in ("<eos>", "<bos>", "<pad>"):
                assert c["text"][offset : offset + len(name)] == name
        for name, top, x in zip(lp["tokens"], lp["top_logprobs"], lp["token_logprobs"], strict=True):
            assert name in top and top[name] == x
            assert 2 <= len(top) <= 3  # the 2 most likely, plus the sampled token if it is not among them
        ended = ids[-1] == EOS
        assert c["finish_reason"] == ("stop" if ended else "length")
        assert ended or len(ids) == 6
        total += len(ids)
    assert body["usage"] == {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": total,
        "total_tokens": len(prompt_ids) + total,
    }


@pytest.mark.parametrize("params", [{}, {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "min_p": 0.05}])
def test_served_logprobs_equal_the_trainers_recomputation(server, policy, params):
    client, _ = server
    body = complete(client, prompt=PROMPT, max_tokens=8, n=4, seed=3, logprobs=0, return_token_ids=True, **params)
    prompt_ids = tokenize(PROMPT)
    for c in body["choices"]:
        recomputed = recompute_logprobs(policy, [prompt_ids], [c["token_ids"]], SamplingParams(**params))
        served = torch.tensor(c["logprobs"]["token_logprobs"])
        torch.testing.assert_close(served, recomputed.reshape(-1)[: len(served)], atol=1e-5, rtol=0)


def test_seed_makes_the_completion_deterministic(server):
    client, _ = server
    request = {"prompt": PROMPT, "max_tokens": 16, "n": 2, "seed": 1234, "logprobs": 0, "ignore_eos": True}
    first, second = complete(client, **request), complete(client, **request)
    strip = [(c["text"], c["logprobs"]["token_logprobs"], c["finish_reason"]) for c in first["choices"]]
    assert strip == [(c["text"], c["logprobs"]["token_logprobs"], c["finish_reason"]) for c in second["choices"]]
    other = complete(client, **{**request, "seed": 1235})
    assert [c["text"] for c in other["choices"]] != [c["text"] for c in first["choices"]]
    assert all(c["finish_reason"] == "length" for c in first["choices"])  # ignore_eos: the full 16 tokens


def test_small_temperatures_and_seed_minus_one_as_vllm(server):
    client, _ = server
    request = {"prompt": PROMPT, "max_tokens": 12, "n": 2, "seed": 9, "logprobs": 0, "ignore_eos": True}

    def answer(**extra) -> list:
        body = complete(client, **{**request, **extra})
        return [(c["text"], c["logprobs"]["token_logprobs"]) for c in body["choices"]]

    # vLLM raises a temperature in (0, 0.01) to 0.01: sampled, not greedy, and served as 0.01
    floor = answer(temperature=0.01)
    assert answer(temperature=0.004) == answer(temperature=1e-7) == floor
    assert floor != answer(temperature=0.0)
    # seed -1 is no seed in vLLM: a fresh one each time (16^-24 chance of two equal answers)
    assert answer(seed=-1) != answer(seed=-1)


def test_greedy_is_the_arg_max_decode(server, policy):
    client, _ = server
    body = complete(client, prompt=PROMPT, max_tokens=5, temperature=0, return_token_ids=True, ignore_eos=True)
    ids = tokenize(PROMPT)
    for token in body["choices"][0]["token_ids"]:
        with torch.no_grad():
            logits, _ = policy(torch.tensor([ids]))
        assert token == int(logits[0, -1].argmax())
        ids.append(token)


def test_prompt_forms_and_choice_order(server):
    client, _ = server
    ids = tokenize(PROMPT)
    # a string without <bos> gets one, as vLLM's add_special_tokens=True; token ids are used as given
    no_bos = complete(client, prompt="3 1 4 1 |", max_tokens=2, return_token_ids=True)
    assert no_bos["choices"][0]["prompt_token_ids"] == ids
    batch = complete(client, prompt=[ids, [BOS, 7, 12]], n=2, max_tokens=3, seed=0, return_token_ids=True)
    assert [c["index"] for c in batch["choices"]] == [0, 1, 2, 3]
    assert [c["prompt_token_ids"] for c in batch["choices"]] == [ids, ids, [BOS, 7, 12], [BOS, 7, 12]]
    assert batch["usage"]["prompt_tokens"] == len(ids) + 3
    strings = complete(client, prompt=[PROMPT, "<bos> 7 |"], max_tokens=1, return_token_ids=True)
    assert [c["prompt_token_ids"] for c in strings["choices"]] == [ids, [BOS, 7, 12]]
    single = complete(client, prompt=ids, max_tokens=1, return_token_ids=True)
    assert single["choices"][0]["prompt_token_ids"] == ids


def test_stop_strings_cut_the_text(server):
    client, _ = server
    request = {"prompt": PROMPT, "max_tokens": 12, "seed": 5, "ignore_eos": True, "return_token_ids": True}
    full = complete(client, **request)["choices"][0]
    words = full["text"].split(" ")
    assert len(words) >= 4
    stop = " ".join(words[2:4])
    cut = complete(client, **request, stop=[stop, "never"])
    choice = cut["choices"][0]
    at = full["text"].find(stop)
    assert choice["text"] == full["text"][:at].rstrip(" ")
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    assert choice["token_ids"] == full["token_ids"][: len(choice["token_ids"])]
    assert detokenize(choice["token_ids"]).endswith(stop)  # the tokens up to the one completing the stop string
    assert cut["usage"]["completion_tokens"] == len(choice["token_ids"])


def _stop_reference(tokens: list[int], stops: list[str]) -> tuple[str, int, str | None]:
    """Brute force of vLLM's rule: the first token after which some stop string is in the text; among
    the stop strings then present, the first in the request's order; the text cut before it."""
    for k in range(1, len(tokens) + 1):
        text = detokenize(tokens[:k])
        present = [s for s in stops if s in text]
        if present and tokens[k - 1] not in (EOS, BOS, PAD):
            return text[: text.find(present[0])].rstrip(" "), k, present[0]
    return detokenize(tokens), len(tokens), None


def test_stop_string_that_completes_first_wins_as_in_vllm():
    tokens = [1, 2, 3, 4, EOS]
    # "3" completes at the third token, "2 3 4" only at the fourth, although it starts earlier
    assert _apply_stop(tokens, ["2 3 4", "3"]) == ("1 2", 3, "3")
    # both complete at the fourth token: the request's order decides
    assert _apply_stop(tokens, ["3 4", "4"]) == ("1 2", 4, "3 4")
    assert _apply_stop(tokens, ["4", "3 4"]) == ("1 2 3", 4, "4")
    assert _apply_stop(tokens, ["<eos>"]) == ("1 2 3 4", 5, None)  # special tokens add no text
    assert _apply_stop(tokens, []) == ("1 2 3 4", 5, None)


_TOKENS = st.lists(st.sampled_from([t for t in range(len(TOKEN_NAMES)) if t != PAD]), max_size=10)


@settings(max_examples=150, deadline=None)
@given(_TOKENS, st.lists(st.text(alphabet="0123 +=|", min_size=1, max_size=4), max_size=4))
def test_stop_strings_match_the_brute_force_rule(tokens, stops):
    assert _apply_stop(tokens, stops) == _stop_reference(tokens, stops)


# ----------------------------------------------------------------------------- bad inputs

BAD = [
    ('{"prompt": "<bos> 3 x |"}', 400, "prompt", "unknown token 'x' at character 8"),
    ('{"prompt": [14, 3, 99]}', 400, "prompt", "unknown token id 99 at position 2"),
    ('{"prompt": "1 <pad>"}', 400, "prompt", "'<pad>'"),
    ('{"prompt": []}', 400, "prompt", "must not be empty"),
    ('{"prompt": " "}', 400, "prompt", "must not be empty"),
    ('{"prompt": [[14, 1], []]}', 400, "prompt", "prompt[1] must not be empty"),
    ('{"prompt": [[14, 1], "1 2"]}', 400, "prompt", "a list of token ids"),
    ('{"prompt": [14, 1], "seed": 1180591620717411303424}', 400, "seed", "64-bit"),
    ('{"prompt": [14, 1], "stop": [""]}', 400, "stop", "must not be empty"),
    ('{"prompt": [1.5]}', 400, "prompt", "a list of token ids"),
    ("{}", 400, "prompt", "prompt is required"),
    ('{"prompt": [14, 1], "temperature": -0.5}', 400, "temperature", ">= 0"),
    ('{"prompt": [14, 1], "temperature": "hot"}', 400, "temperature", ">= 0"),
    ('{"prompt": [14, 1], "temperature": NaN}', 400, "temperature", "finite"),
    ('{"prompt": [14, 1], "top_p": 0}', 400, "top_p", "(0, 1]"),
    ('{"prompt": [14, 1], "top_p": 1.5}', 400, "top_p", "(0, 1]"),
    ('{"prompt": [14, 1], "top_k": -2}', 400, "top_k", "-1 or 0 (off) or >= 1"),
    ('{"prompt": [14, 1], "top_k": 2.5}', 400, "top_k", "integer"),
    ('{"prompt": [14, 1], "min_p": -0.1}', 400, "min_p", "[0, 1]"),
    ('{"prompt": [14, 1], "min_p": 1.1}', 400, "min_p", "[0, 1]"),
    ('{"prompt": [14, 1], "max_tokens": 0}', 400, "max_tokens", f"[1, {DEFAULT_MAX_MODEL_LEN - 2}]"),
    ('{"prompt": [14, 1], "max_tokens": 100000}', 400, "max_tokens", f"[1, {DEFAULT_MAX_MODEL_LEN - 2}]"),
    ('{"prompt": [14, 1], "max_tokens": true}', 400, "max_tokens", "integer >= 1"),
    ('{"prompt": [14, 1], "n": 0}', 400, "n", "[1, 64]"),
    ('{"prompt": [14, 1], "n": "2"}', 400, "n", "[1, 64]"),
    ('{"prompt": [14, 1], "logprobs": 17}', 400, "logprobs", "[0, 16]"),
    ('{"prompt": [14, 1], "stop": 3}', 400, "stop", "a string or a list of strings"),
    ('{"prompt": [14, 1], "stop": ["a", "b", "c", "d", "e"]}', 400, "stop", "at most 4"),
    ('{"prompt": [14, 1], "echo": true}', 400, "echo", "echo must be false"),
    ('{"prompt": [14, 1], "stream": true}', 400, "stream", "stream must be false"),
    ('{"prompt": [14, 1], "frequency_penalty": 1}', 400, "frequency_penalty", "unrecognized"),
    ('{"prompt": [14, 1], "model": "gpt-4"}', 404, "model", "`gpt-4` does not exist"),
    ('{"prompt": [14, 1], ', 400, None, "not valid JSON"),
    ("[1, 2]", 400, None, "must be a JSON object"),
    ("", 400, None, "not valid JSON"),
]


@pytest.mark.parametrize(("body", "status", "param", "phrase"), BAD, ids=[b[0][:40] for b in BAD])
def test_bad_input_is_a_client_error_and_the_server_keeps_serving(server, body, status, param, phrase):
    client, _ = server
    r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == status
    assert error["param"] == param
    assert phrase in error["message"], error["message"]
    assert complete(client, prompt=[14, 1], max_tokens=2)["choices"]  # and the next good request is served


def test_long_prompt_and_routes(policy):
    app = create_app(policy, max_model_len=8, registry=CollectorRegistry())
    with run_server_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        r = client.post("/v1/completions", json={"prompt": [BOS] + [1] * 8})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        r = client.post("/v1/completions", json={"prompt": [BOS, 1, 2], "max_tokens": 6})
        assert r.status_code == 400 and "[1, 5]" in r.json()["error"]["message"]
        assert complete(client, prompt=[BOS, 1, 2], max_tokens=5)
        assert client.get("/nowhere").status_code == 404
        assert client.get("/v1/completions").status_code == 405
        assert "error" in client.get("/nowhere").json()
        assert client.get("/health").status_code == 200
        models = client.get("/v1/models").json()
        assert models["object"] == "list"
        assert models["data"][0]["id"] == "toy-reverse" and models["data"][0]["max_model_len"] == 8
        assert not any(
            status.startswith("5") for (name, labels) in scrape(client) for k, status in labels if k == "status"
        )


def test_request_limits_content_type_and_body_size(server):
    client, _ = server
    good = json.dumps({"prompt": [14, 1], "max_tokens": 2}).encode()
    # FastAPI (and so vLLM) parses the body as JSON without a Content-Type or with a JSON one only
    for content_type, status in [
        ("text/plain", 400),
        ("application/x-www-form-urlencoded", 400),  # what `curl -d` sends without -H
        ("application/json; charset=utf-8", 200),
        ("application/vnd.api+json", 200),
    ]:
        r = client.post("/v1/completions", content=good, headers={"content-type": content_type})
        assert r.status_code == status, (content_type, r.text)
        if status == 400:
            assert "Content-Type" in r.json()["error"]["message"] and r.json()["error"]["param"] is None
    assert client.post("/v1/completions", content=good).status_code == 200  # no Content-Type at all
    # a body beyond MAX_BODY_BYTES is refused before it is parsed
    huge = json.dumps({"prompt": "1 " * MAX_BODY_BYTES}).encode()
    r = client.post("/v1/completions", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == 413
    # a long prompt string is refused after max_model_len tokens, not tokenized to the end
    r = client.post("/v1/completions", json={"prompt": "1" * 200_000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert f"fewer than max_model_len = {DEFAULT_MAX_MODEL_LEN}" in r.json()["error"]["message"]
    # an unknown token is quoted shortened, not echoed whole
    r = client.post("/v1/completions", json={"prompt": "x" * 10_000})
    assert r.status_code == 400 and len(r.text) < 400 and "'xxxxxxxxxxxxxxxxxxxx...'" in r.text
    # one request may not hold the engine for long: n * prompts * max_tokens is bounded
    r = client.post("/v1/completions", json={"prompt": [[14, 1]] * 64, "n": 64, "max_tokens": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    assert f"<= {MAX_BATCH_TOKENS}, got 64 * 64 * 5 = {64 * 64 * 5}" in r.json()["error"]["message"]
    assert complete(client, prompt=[14, 1], max_tokens=2)["choices"]


# a fuzzed request body: each field is a value of the right kind (often in range) or any JSON value
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=2),
    max_leaves=6,
)
_IDS = st.lists(st.integers(0, 14), min_size=1, max_size=4) | st.lists(st.integers(-1, 16), max_size=4)
_TEXT = st.lists(st.sampled_from(TOKEN_NAMES[:-1]), min_size=1, max_size=4).map(" ".join) | st.lists(
    st.sampled_from([*TOKEN_NAMES, "x", "\u00e9", "\u0663", " ", "\u3000"]), max_size=5
).map("".join)
# per field: mostly valid values, then values around its allowed range (both sides of each bound)
_FIELDS = {
    "prompt": st.one_of(_IDS, _TEXT, st.lists(_IDS | _TEXT, max_size=3)),
    "model": st.sampled_from(["toy-reverse", "toy-reverse", "gpt-4", ""]),
    "max_tokens": st.integers(1, 8) | st.integers(-1, 26),
    "temperature": st.floats(0, 2) | st.floats(-1, 3),
    "top_p": st.floats(0.1, 1) | st.floats(-0.5, 1.5),
    "top_k": st.integers(-1, 20) | st.integers(-3, 0),
    "min_p": st.floats(0, 1) | st.floats(-0.5, 1.5),
    "n": st.integers(1, 3) | st.integers(-1, 0),
    "seed": st.integers(-(2**63), 2**63 - 1) | st.integers(-(2**64), 2**64),
    "logprobs": st.integers(-1, 16) | st.integers(-2, 18),
    "stop": st.lists(st.text(alphabet="0123 |\u00e9", min_size=1, max_size=3), max_size=4)
    | st.lists(st.text(alphabet="0 ", max_size=2), max_size=5)
    | _TEXT,
    "echo": st.sampled_from([False, False, True]),
    "stream": st.sampled_from([False, False, True]),
    "ignore_eos": st.booleans(),
    "return_token_ids": st.booleans(),
    "frequency_penalty": st.floats(-2, 2),  # vLLM's, not served here: always a 400
}


@st.composite
def _bodies(draw) -> tuple[bytes, str | None, object]:
    # sampled_from favours its first entry: mostly well-formed JSON objects with a prompt and
    # near-range values, so the fuzz reaches the range checks and generation, not only the parser
    names = draw(st.lists(st.sampled_from(sorted(set(_FIELDS) - {"prompt"})), unique=True, max_size=5))
    if draw(st.sampled_from([True] * 9 + [False])):
        names.append("prompt")
    body: object = {
        name: draw(_JSON if draw(st.sampled_from([False] * 5 + [True])) else _FIELDS[name]) for name in names
    }
    if draw(st.sampled_from([False] * 19 + [True])):
        body = draw(_JSON)  # not an object at all
    raw = json.dumps(body, allow_nan=True).encode()  # NaN / Infinity as Python writes them
    if draw(st.sampled_from([False] * 19 + [True])):
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]  # malformed JSON
    content_type = draw(st.sampled_from(["application/json"] * 8 + [None, "text/plain"]))
    return raw, content_type, body


@pytest.fixture(scope="module")
def small_server(policy):
    app = create_app(policy, max_model_len=24)  # room for the default max_tokens (16); bounded work
    with run_server_in_thread(app, timeout_s=30) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, app


def test_fuzzed_requests_get_a_named_client_error_never_a_server_error(small_server):
    client, _ = small_server

    @settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(_bodies())
    def one(case):
        raw, content_type, body = case
        headers = {} if content_type is None else {"content-type": content_type}
        r = client.post("/v1/completions", content=raw, headers=headers)
        assert r.status_code in (200, 400, 404), r.text
        if r.status_code == 200:
            answer = CompletionResponse.model_validate(r.json())
            assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
            return
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["code"] == r.status_code and error["message"]
        if error["param"] is not None:  # a named field: one the request sent (or the required prompt)
            assert error["param"] in error["message"]
            assert error["param"] == "prompt" or (isinstance(body, dict) and error["param"] in body)

    one()
    metrics = scrape(client)
    statuses = {dict(labels)["status"] for name, labels in metrics if name == "toy_http_requests_total"}
    assert statuses <= {"200", "400", "404"} and "400" in statuses
    assert metrics[("toy_requests_in_flight", ())] == 0
    assert complete(client, prompt=[14, 1], max_tokens=2)["choices"]  # and it keeps serving


class _Broken(torch.nn.Module):
    def forward(self, tokens, state=None):
        raise RuntimeError("a server-side bug")


def test_a_server_bug_is_a_500_counted_and_the_server_keeps_serving(policy):
    app = create_app(_Broken(), registry=CollectorRegistry())
    with run_server_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(2):
            r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
            assert r.status_code == 500
            assert r.json()["error"]["type"] == "internal_server_error"
            assert "a server-side bug" not in r.text  # no internals leak to the client
        assert client.get("/health").status_code == 200
        metrics = scrape(client)
    assert metrics[("toy_http_requests_total", (("path", "/v1/completions"), ("status", "500")))] == 2
    assert metrics[("toy_e2e_request_latency_seconds_count", ())] == 0
    assert metrics[("toy_requests_in_flight", ())] == 0


def test_create_app_and_runner_arguments(policy):
    with pytest.raises(TypeError, match="policy"):
        create_app("not a model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_model_len"):
        create_app(policy, max_model_len=1)
    with pytest.raises(ValueError, match="model_name"):
        create_app(policy, model_name="")
    with pytest.raises(ValueError, match="timeout_s"), run_server_in_thread(create_app(policy), timeout_s=0):
        pass
    with pytest.raises(ValueError, match="max_requests"):
        serve(policy, max_requests=0)
    with pytest.raises(ValueError, match="duration_s"):
        serve(policy, duration_s=0)
    # a port already taken: the runner reports it instead of hanging
    with run_server_in_thread(create_app(policy)) as url:
        taken = int(url.rsplit(":", 1)[1])
        with (
            pytest.raises(RuntimeError, match="did not start"),
            run_server_in_thread(create_app(policy), port=taken, timeout_s=10),
        ):
            pass


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_runner_binds_loopback_only_and_stops_when_the_block_raises(policy):
    for host in ("0.0.0.0", "192.168.1.10", "example.org", "::"):
        with pytest.raises(ValueError, match="loopback"), run_server_in_thread(create_app(policy), host=host):
            pass
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(KeyError, match="the body failed"), run_server_in_thread(create_app(policy)) as url:
        port = int(url.rsplit(":", 1)[1])
        assert url == f"http://127.0.0.1:{port}" and _accepts(port)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        raise KeyError("the body failed")
    assert not _accepts(port)  # the socket is closed: nothing listens any more
    assert f"uvicorn-{port}" not in {t.name for t in threading.enumerate()} - before


# ----------------------------------------------------------------------------- metrics and load


def test_metrics_match_the_requests_sent(policy):
    app = create_app(policy)  # its own registry: counts start at zero
    with run_server_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        generated = prompt_tokens = 0
        for seed in range(5):
            usage = complete(client, prompt=PROMPT, max_tokens=4, n=2, seed=seed)["usage"]
            generated += usage["completion_tokens"]
            prompt_tokens += usage["prompt_tokens"]
        for _ in range(3):
            assert client.post("/v1/completions", json={"prompt": PROMPT, "top_p": 2}).status_code == 400
        assert client.post("/v1/completions", json={"prompt": PROMPT, "model": "x"}).status_code == 404
        client.get("/health")
        metrics = scrape(client)
    requests = {labels: v for (name, labels), v in metrics.items() if name == "toy_http_requests_total"}
    assert requests == {
        (("path", "/v1/completions"), ("status", "200")): 5,
        (("path", "/v1/completions"), ("status", "400")): 3,
        (("path", "/v1/completions"), ("status", "404")): 1,
        (("path", "/health"), ("status", "200")): 1,
    }
    assert metrics[("toy_e2e_request_latency_seconds_count", ())] == 5
    buckets = [
        metrics[("toy_e2e_request_latency_seconds_bucket", (("le", le),))]
        for le in [*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 5
    assert 0 < metrics[("toy_e2e_request_latency_seconds_sum", ())] < 5 * 30
    assert metrics[("toy_generation_tokens_total", ())] == generated
    assert metrics[("toy_prompt_tokens_total", ())] == prompt_tokens == 5 * len(tokenize(PROMPT))
    assert metrics[("toy_requests_in_flight", ())] == 0
    assert app.state.completions_answered == 9


def test_concurrent_clients_are_served_correctly(policy):
    app = create_app(policy)
    threads, per_thread = 8, 10
    # two kinds of request interleaved, so that one request's parameters cannot leak into another's
    kinds = [
        {"prompt": PROMPT, "max_tokens": 8},
        {"prompt": [PROMPT, "<bos> 2 7 |"], "max_tokens": 6, "n": 2, "temperature": 0.7, "top_k": 5, "logprobs": 2},
    ]

    def payload(seed: int) -> dict:
        return {**kinds[seed % 2], "seed": seed}

    def answer(body: dict) -> list:
        return [(c["text"], c["logprobs"] and c["logprobs"]["token_logprobs"]) for c in body["choices"]]

    start = time.monotonic()
    with run_server_in_thread(app) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            expected = {seed: answer(complete(client, **payload(seed))) for seed in range(per_thread)}

        def worker(k: int) -> list[tuple[int, int, list]]:
            out = []
            with httpx.Client(base_url=url, timeout=30) as client:
                for i in range(per_thread):
                    seed = (i + k) % per_thread  # each thread its own order
                    r = client.post("/v1/completions", json=payload(seed))
                    out.append((seed, r.status_code, answer(r.json()) if r.status_code == 200 else []))
            return out

        with ThreadPoolExecutor(threads) as pool:
            results = [row for rows in pool.map(worker, range(threads)) for row in rows]
        with httpx.Client(base_url=url, timeout=30) as client:
            metrics = scrape(client)
    assert time.monotonic() - start < 60
    assert len(results) == threads * per_thread
    assert all(status == 200 for _, status, _ in results)
    assert all(got == expected[seed] for seed, _, got in results)  # same seed, same answer, under load
    served = metrics[("toy_http_requests_total", (("path", "/v1/completions"), ("status", "200")))]
    assert served == threads * per_thread + per_thread
    assert not any(labels and dict(labels).get("status", "").startswith("5") for _, labels in metrics)
    assert metrics[("toy_requests_in_flight", ())] == 0


def test_in_flight_gauge_counts_waiting_requests(policy):
    app = create_app(policy)
    with run_server_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:

        def one_request() -> dict:
            with httpx.Client(base_url=url, timeout=30) as own:
                return complete(own, prompt=PROMPT)

        with ThreadPoolExecutor(3) as pool:
            with app.state.engine_lock:  # the model is busy: requests queue behind it
                futures = [pool.submit(one_request) for _ in range(3)]
                deadline = time.monotonic() + 20
                while scrape(client)[("toy_requests_in_flight", ())] < 3 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert scrape(client)[("toy_requests_in_flight", ())] == 3
                assert not any(f.done() for f in futures)
            assert all(f.result(timeout=20)["choices"] for f in futures)
        assert scrape(client)[("toy_requests_in_flight", ())] == 0


# ----------------------------------------------------------------------------- the CLI


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"the server at {url} did not come up within {timeout_s} s")


def test_cli_trains_serves_then_stops_by_itself(tmp_path):
    checkpoint = tmp_path / "toy.pt"
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # trains (5 SFT steps), saves the checkpoint, stops after 2 completions (60 s at the latest)
    command = [
        sys.executable,
        "-m",
        "nemo_rl_theory.serving",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--steps",
        "5",
        "--checkpoint",
        str(checkpoint),
        "--max-requests",
        "2",
        "--duration-s",
        "60",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc, timeout_s=60)
        for _ in range(2):
            r = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}, timeout=30)
            assert r.status_code == 200 and r.json()["model"] == "toy-reverse"
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert f"serving toy-reverse on http://127.0.0.1:{port}" in output
    # the checkpoint it wrote is what a later start loads instead of training
    loaded = load_policy(checkpoint=str(checkpoint), steps=999)
    assert set(loaded.state_dict()) == set(torch.load(checkpoint, weights_only=True))
    for name, value in torch.load(checkpoint, weights_only=True).items():
        assert torch.equal(loaded.state_dict()[name], value)


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["--port", "0"], "--port must be in [1, 65535]"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--max-requests", "0"], "--max-requests must be >= 1"),
        (["--duration-s", "-1"], "--duration-s must be > 0"),
        (["--task", "sort"], "invalid choice"),
    ],
)
def test_cli_rejects_bad_arguments_before_training(argv, phrase, capsys):
    from nemo_rl_theory.serving.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and phrase in capsys.readouterr().err


@pytest.mark.parametrize("bounds", [{"max_requests": 1, "duration_s": 30}, {"duration_s": 0.5}])
def test_in_process_serve_stops_by_itself(policy, bounds):
    result = {}
    port = free_port()

    def run() -> None:
        serve(policy, port=port, log_level="warning", **bounds)
        result["stopped"] = True

    # serve() is the CLI's main-thread loop; in a thread uvicorn skips its signal handlers
    thread = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    thread.start()
    if "max_requests" in bounds:
        while time.monotonic() - start < 30:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
                assert r.status_code == 200
                break
            except httpx.TransportError:
                time.sleep(0.05)
    thread.join(timeout=30)
    assert result == {"stopped": True}
    assert time.monotonic() - start < 30

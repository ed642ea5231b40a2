"""Serving: the toy policy behind an OpenAI-compatible API, for ``docs/advanced/production-deployment``.

One module per topic; import each from its module, e.g.
``from nemo_rl_theory.serving.app import create_app``:

- :mod:`~nemo_rl_theory.serving.sampling`: vLLM's and NeMo RL's sampling semantics (temperature,
  min-p, top-k keeping ties, top-p keeping the most likely token), processed log-probs, generation
  on the toy policy, and the trainer's recomputation of the served log-probs.
- :mod:`~nemo_rl_theory.serving.app`: the FastAPI app (``POST /v1/completions`` in vLLM's
  completions schema, ``/v1/models``, ``/health``, Prometheus ``/metrics``), a loopback server in a
  thread, and the ``python -m nemo_rl_theory.serving`` command that ``nox -s serve`` runs.
- :mod:`~nemo_rl_theory.serving.alerting`: histogram quantiles as Prometheus estimates them, SLO
  burn rates and multi-window alerts, and drift statistics.
"""

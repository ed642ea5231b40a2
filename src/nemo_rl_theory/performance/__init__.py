"""Performance & Scaling: the library code behind ``docs/advanced/performance`` and ``performance-scaling``.

One module per topic; import each from its module, e.g.
``from nemo_rl_theory.performance.planning import model_state_bytes``:

- :mod:`~nemo_rl_theory.performance.flops`: FLOPs per token (2N, 6N, attention), MFU, torch's FLOP counter.
- :mod:`~nemo_rl_theory.performance.profiling`: ``torch.profiler`` regions and Chrome-trace self times.
- :mod:`~nemo_rl_theory.performance.distributed`: ``run_ranks``, real gloo ranks on 127.0.0.1, bounded.
- :mod:`~nemo_rl_theory.performance.parallelism`: ring collective volumes, pipeline bubble and schedules.
- :mod:`~nemo_rl_theory.performance.memory`: saved-tensor and live-peak meters, activation bytes, packing.
- :mod:`~nemo_rl_theory.performance.precision`: floating-point formats, the sampler-trainer mismatch.
- :mod:`~nemo_rl_theory.performance.benchmarking`: paired timings, bootstrap intervals of speed ratios.
- :mod:`~nemo_rl_theory.performance.monitoring`: CUSUM and EWMA charts, run lengths, TensorBoard logs.
- :mod:`~nemo_rl_theory.performance.planning`: ZeRO / FSDP bytes, communication, parallel plans, budgets.

The log-prob kernel that never builds the logits, ``linear_token_logprobs``, is in
:mod:`nemo_rl_theory.logprobs` beside ``token_logprobs``.
"""

"""Advanced Training Techniques: the library code behind the pages of ``docs/advanced/training``.

One module per technique; import each from its module, e.g.
``from nemo_rl_theory.training.pareto import non_dominated_sort``:

- :mod:`~nemo_rl_theory.training.multiobjective`: weighted sums, per-objective advantages,
  uncertainty weighting, GradNorm, PCGrad, min-norm (MGDA) weights.
- :mod:`~nemo_rl_theory.training.pareto`: dominance, non-dominated sorting, hypervolume, scalarisation.
- :mod:`~nemo_rl_theory.training.curriculum`: difficulty schedules, success-rate sampling, dynamic sampling.
- :mod:`~nemo_rl_theory.training.rewards`: reward combinators, partial credit, potential-based shaping.
- :mod:`~nemo_rl_theory.training.normalization`: token / sequence / Dr. GRPO reductions and bounded surrogates.
- :mod:`~nemo_rl_theory.training.stability`: clipping, non-finite guards, spike and entropy monitors.
- :mod:`~nemo_rl_theory.training.schedules`: warmup + decay schedules and NeMo RL's ``policy.scheduler``.
- :mod:`~nemo_rl_theory.training.bayesopt`: Gaussian-process Bayesian optimisation.
"""

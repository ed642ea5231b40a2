"""Research & Validation: statistics and provenance for ``docs/advanced/research`` and ``research-validation``.

One module per topic; import each from its module, e.g.
``from nemo_rl_theory.research.evaluation import pass_at_k``:

- :mod:`~nemo_rl_theory.research.evaluation`: unbiased pass@k and maj@k, clustered and paired
  standard errors of eval scores, McNemar's test.
- :mod:`~nemo_rl_theory.research.testing`: Holm and Benjamini–Hochberg adjustments, power and
  sample size of a two-sample t test.
- :mod:`~nemo_rl_theory.research.aggregates`: interquartile mean, stratified bootstrap intervals
  over runs × tasks, probability of improvement, optimality gap, performance profiles.
- :mod:`~nemo_rl_theory.research.manifest`: run manifests (config and data hashes, git state,
  package versions, seeds) written next to results and verified on reload.
"""

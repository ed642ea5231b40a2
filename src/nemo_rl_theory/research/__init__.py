"""Research: statistics, designs and provenance for ``docs/advanced/research`` and ``research-validation``.

One module per topic; import each from its module, e.g.
``from nemo_rl_theory.research.evaluation import pass_at_k``:

- :mod:`~nemo_rl_theory.research.evaluation`: unbiased pass@k and maj@k, clustered and paired
  standard errors of eval scores, McNemar's test.
- :mod:`~nemo_rl_theory.research.testing`: Holm and Benjamini–Hochberg adjustments, power and
  sample size of a two-sample t test.
- :mod:`~nemo_rl_theory.research.aggregates`: interquartile mean, stratified bootstrap intervals
  over runs × tasks, probability of improvement, optimality gap, performance profiles.
- :mod:`~nemo_rl_theory.research.effects`: Cohen's d and Hedges' g (two-sample and paired) with
  exact noncentral-t confidence intervals.
- :mod:`~nemo_rl_theory.research.factorial`: two-level factorial and one-factor-at-a-time designs;
  effects and interactions with replicate (optionally seed-blocked) standard errors.
- :mod:`~nemo_rl_theory.research.tuning`: the winner's curse (expected maximum of normals),
  expected best score versus budget (Dodge et al.), successive-halving budget accounting.
- :mod:`~nemo_rl_theory.research.dynamics`: saturating learning-curve fits with standard errors,
  steps to a fraction of the asymptote, normalised area under the curve, and the gradient noise
  scale (McCandlish et al. 2018) from two batch sizes or per-example gradients.
- :mod:`~nemo_rl_theory.research.manifest`: run manifests (config, data and output hashes, git
  state, package versions, seeds) written next to results and verified on reload.
"""

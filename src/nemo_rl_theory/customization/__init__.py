"""Algorithm Customization: the library code behind the pages of ``docs/advanced/algorithm-customization``.

One module per topic; import each from its module, e.g.
``from nemo_rl_theory.customization.contract import check_loss_contract``:

- :mod:`~nemo_rl_theory.customization.contract`: the contract every loss of the library obeys, as a
  reusable checker (micro-batches and data-parallel ranks with global counts, gradients, padding,
  bad input).
- :mod:`~nemo_rl_theory.customization.conventions`: NeMo RL's, TRL's and verl's GRPO loss
  aggregations and advantage scalings, each expressed with the library's losses.
"""

r"""Reward functions for RL post-training: combinators, partial credit and potential-based shaping.

A reward function maps a batch of prompts and sampled responses to one scalar per response. On the
toy tasks this is :data:`~nemo_rl_theory.toy.tasks.RewardFn`, ``(problems, rollout) -> Tensor[B]``;
everything here also works on plain tensors so that it can be reused outside the toy.

* combining rewards (``Tensor[B]`` in, ``Tensor[B]`` out): :func:`weighted_sum_rewards`,
  :func:`gate_rewards`, :func:`clip_rewards`, :func:`standardize_rewards`, :func:`snap_rewards` (exact
  GRPO statistics); the same operations on
  reward *functions*: :func:`weighted_sum`, :func:`gated`, :func:`clipped`, :func:`snapped`;
* partial credit for answers checked token by token: :func:`answer_position_matches`,
  :func:`partial_credit`, :func:`prefix_match_length`, and the reward functions
  :func:`partial_credit_reward`, :func:`prefix_credit_reward`;
* potential-based shaping (Ng, Harada and Russell, 1999) on response-aligned ``Tensor[B, T]``:
  :func:`response_mask`, :func:`progress_potential`, :func:`potential_shaping`,
  :func:`discounted_returns`;
* the exact expected correctness of a policy, :func:`expected_correctness`
  (:math:`\pi(y^\star \mid x)`, the pass rate without sampling noise).

Response-aligned tensors index the response tokens :math:`y_1, \dots, y_n` from 0: column
:math:`t` of a ``Tensor[B, T]`` of per-token rewards is the reward for emitting :math:`y_{t+1}` in
state :math:`s_t = (x, y_{\le t})`, and column :math:`t` of the ``Tensor[B, T+1]`` of potentials
is :math:`\Phi(s_t)`.

Every function validates its inputs and raises ``TypeError`` (wrong type or dtype) or
``ValueError`` (wrong shape, empty, NaN/inf, out of range) naming the argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from nemo_rl_theory._validation import _shape, require_number
from nemo_rl_theory.toy.tasks import RewardFn

if TYPE_CHECKING:
    from nemo_rl_theory.toy.policy import Rollout
    from nemo_rl_theory.toy.tasks import Problems


__all__ = [
    "RewardFn",
    "answer_position_matches",
    "clip_rewards",
    "clipped",
    "discounted_returns",
    "expected_correctness",
    "gate_rewards",
    "gated",
    "partial_credit",
    "partial_credit_reward",
    "potential_shaping",
    "prefix_credit_reward",
    "prefix_match_length",
    "progress_potential",
    "response_mask",
    "snap_rewards",
    "snapped",
    "standardize_rewards",
    "weighted_sum",
    "weighted_sum_rewards",
]


# ----------------------------------------------------------------------------- validation


def _check_gamma(gamma: object) -> float:
    g = require_number("gamma", gamma)
    if not 0.0 < g <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {g}")
    return g


def _float_tensor(name: str, value: object, ndim: int, layout: str, *, allow_empty: bool = False) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor {layout}, got dtype {value.dtype}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {_shape(value)}")
    if value.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty, got shape {_shape(value)}")
    if not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return value


def _rewards(name: str, value: object, batch: int | None = None) -> Tensor:
    """A finite floating ``Tensor[B]`` (with ``B == batch`` when given)."""
    t = _float_tensor(name, value, 1, "[B]")
    if batch is not None and t.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B] = [{batch}], got {_shape(t)}")
    return t


def _int_tensor(name: str, value: object, ndim: int, layout: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor {layout}, got dtype {value.dtype}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {_shape(value)}")
    return value


def _lengths(name: str, value: object, batch: int, width: int) -> Tensor:
    t = _int_tensor(name, value, 1, "[B]")
    if t.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B] = [{batch}], got {_shape(t)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > width):
        raise ValueError(
            f"{name} must lie in [0, {width}] (the padded width), got values in [{int(t.min())}, {int(t.max())}]"
        )
    return t


def _gate(name: str, value: object, batch: int) -> Tensor:
    """A ``Tensor[B]`` of bools, or of numbers that are all 0 or 1, as a bool tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B], got {type(value).__name__}")
    if value.dim() != 1 or value.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B] = [{batch}], got {_shape(value)}")
    if value.dtype == torch.bool:
        return value
    if value.is_complex():
        raise TypeError(f"{name} must be bool or 0/1 numbers, got dtype {value.dtype}")
    if not bool(((value == 0) | (value == 1)).all()):
        raise ValueError(f"{name} must contain only 0 and 1 (a gate is a yes/no verdict), got other values")
    return value == 1


def _prefix_mask(name: str, value: object, shape: torch.Size) -> Tensor:
    """A ``Tensor[B, T]`` 0/1 mask whose rows are ones then zeros (one episode per row), as float."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, T], got {type(value).__name__}")
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {_shape(value)}")
    if value.is_complex():
        raise TypeError(f"{name} must be bool or 0/1 numbers, got dtype {value.dtype}")
    m = value.double()
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError(f"{name} must contain only 0 and 1, got other values")
    if m.shape[1] > 1 and bool((m[:, 1:] > m[:, :-1]).any()):
        row = int((m[:, 1:] > m[:, :-1]).any(dim=1).nonzero()[0])
        raise ValueError(f"{name} rows must be ones followed by zeros (one episode per row); row {row} is not")
    return m


def _call(name: str, fn: object, problems: Problems, rollout: Rollout) -> Tensor:
    """Call a reward function and check it returned finite floats ``Tensor[B]``."""
    if not callable(fn):
        raise TypeError(f"{name} must be callable (problems, rollout) -> Tensor[B], got {type(fn).__name__}")
    out = fn(problems, rollout)
    batch = len(problems)
    if not isinstance(out, Tensor):
        raise TypeError(f"{name} must return a torch.Tensor [B], got {type(out).__name__}")
    if out.shape != (batch,):
        raise ValueError(f"{name} must return shape [B] = [{batch}], got {_shape(out)}")
    if out.dtype == torch.bool or not out.is_floating_point():
        out = out.float()
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} returned NaN or inf rewards")
    return out


# ----------------------------------------------------------------------------- combining rewards


def weighted_sum_rewards(components: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    r"""The scalarised reward :math:`r_i = \sum_k w_k\, r^{(k)}_i`.

    Args:
        components: name -> ``Tensor[B]`` reward of each component (all the same ``B``).
        weights: name -> finite weight; the names must be exactly those of ``components``
            (a missing or extra name is an error, not a silent zero).

    Returns:
        ``Tensor[B]`` in the promoted dtype of the components.
    """
    if not isinstance(components, Mapping) or not components:
        raise ValueError("components must be a non-empty mapping name -> Tensor[B]")
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping name -> float, got {type(weights).__name__}")
    if set(weights) != set(components):
        missing, extra = sorted(set(components) - set(weights)), sorted(set(weights) - set(components))
        raise ValueError(f"weights must name exactly the components; missing {missing}, unknown {extra}")
    batch = None
    total: Tensor | None = None
    for key, value in components.items():
        r = _rewards(f"components[{key!r}]", value, batch)
        batch = r.shape[0]
        term = require_number(f"weights[{key!r}]", weights[key]) * r
        total = term if total is None else total + term
    assert total is not None
    return total


def gate_rewards(rewards: Tensor, gate: Tensor, *, otherwise: float = 0.0) -> Tensor:
    r"""Gating: :math:`r_i\,\mathbb 1[g_i] + c\,(1 - \mathbb 1[g_i])`: the reward counts only where the gate passes.

    Args:
        rewards: ``Tensor[B]``.
        gate: ``Tensor[B]`` bool, or 0/1 numbers (e.g. a format check).
        otherwise: :math:`c`, the reward where the gate fails.
    """
    r = _rewards("rewards", rewards)
    g = _gate("gate", gate, r.shape[0])
    c = require_number("otherwise", otherwise)
    return torch.where(g, r, torch.full_like(r, c))


def clip_rewards(rewards: Tensor, low: float | None = None, high: float | None = None) -> Tensor:
    r"""Clipping: :math:`\min(\max(r_i, \ell), h)`; either bound may be ``None`` (no bound), not both.

    Clipping is monotone, so it keeps the order of the rewards within a group, but it is not affine,
    so it changes GRPO's advantages (unless no reward is clipped).
    """
    r = _rewards("rewards", rewards)
    if low is None and high is None:
        raise ValueError("clip_rewards needs at least one of low and high")
    lo = None if low is None else require_number("low", low)
    hi = None if high is None else require_number("high", high)
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"low must be < high, got low = {lo}, high = {hi}")
    return r.clamp(min=lo, max=hi)


def standardize_rewards(rewards: Tensor, *, eps: float = 1e-6) -> Tensor:
    r"""Batch standardisation :math:`(r_i - \bar r) / (s + \epsilon)` with the Bessel-corrected std :math:`s`.

    This is *one* positive affine map for the whole batch. GRPO's per-group standardisation
    (``normalize_rewards=True``) already removes any such map up to :math:`\epsilon`, so applying it
    before GRPO changes nothing of substance; it matters for losses that use the raw reward scale.

    Args:
        rewards: ``Tensor[B]`` with ``B >= 2``.
        eps: :math:`\epsilon > 0`.
    """
    r = _rewards("rewards", rewards)
    if r.shape[0] < 2:
        raise ValueError(f"rewards must hold at least 2 values to standardise, got {r.shape[0]}")
    e = require_number("eps", eps)
    if e <= 0:
        raise ValueError(f"eps must be > 0, got {e}")
    return (r - r.mean()) / (r.std(unbiased=True) + e)


#: Largest ``|round(r * 2**bits)|`` that :func:`snap_rewards` accepts: 16 squares of it still fit in
#: float32's 24-bit significand, so every group sum and sum of squares is exact.
SNAP_MAX_UNITS = 2**10


def snap_rewards(rewards: Tensor, *, bits: int = 8) -> Tensor:
    r"""Round rewards to the dyadic grid :math:`2^{-\text{bits}}\,\mathbb Z` so that group statistics are exact.

    With :math:`|r| \le 2^{10 - \text{bits}}` and groups of at most 16, every group sum and sum of
    squares is exact in float32 and float64, so baselines and advantages are bit-exact and
    independent of summation order. It also restores ties that rounding broke: two rewards
    meant to be equal but one unit in the last place apart are a genuine near-tie to
    :func:`~nemo_rl_theory.advantages.grpo_advantages` (:math:`\sigma \approx 10^{-17}`, so a lone
    dissenter's normalised advantage is huge); on the grid they are equal and :math:`\sigma = 0`.
    (Exactly equal rewards need no snapping: the library's :math:`\sigma` is exactly 0 over them.)

    Args:
        rewards: ``Tensor[B]`` float.
        bits: grid resolution, :math:`0 \le \text{bits} \le 10`.

    Returns:
        ``Tensor[B]``, same dtype, each value moved by at most :math:`2^{-\text{bits}-1}`.
    """
    r = _rewards("rewards", rewards)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= 10:
        raise ValueError(f"bits must be an int in [0, 10], got {bits!r}")
    units = torch.round(r.double() * 2.0**bits)
    if float(units.abs().max()) > SNAP_MAX_UNITS:
        raise ValueError(
            f"rewards must satisfy |r| <= {SNAP_MAX_UNITS / 2**bits:g} for bits = {bits} (exact group statistics), "
            f"got max |r| = {float(r.abs().max()):g}; rescale the rewards or use fewer bits"
        )
    return (units / 2.0**bits).to(r.dtype)


def weighted_sum(terms: Mapping[str, tuple[float, RewardFn]]) -> RewardFn:
    r"""The reward function :math:`R(x, y) = \sum_k w_k R_k(x, y)` from named ``(w_k, R_k)`` pairs.

    Each component's output is checked (shape ``[B]``, finite) and an error names the component.
    """
    if not isinstance(terms, Mapping) or not terms:
        raise ValueError("terms must be a non-empty mapping name -> (weight, reward_fn)")
    checked: dict[str, tuple[float, RewardFn]] = {}
    for key, term in terms.items():
        if not isinstance(term, tuple) or len(term) != 2:
            raise TypeError(f"terms[{key!r}] must be a (weight, reward_fn) pair, got {term!r}")
        w, fn = term
        if not callable(fn):
            raise TypeError(f"terms[{key!r}] reward_fn must be callable, got {type(fn).__name__}")
        checked[key] = (require_number(f"terms[{key!r}] weight", w), fn)

    def reward(problems: Problems, rollout: Rollout) -> Tensor:
        values = {key: _call(f"terms[{key!r}]", fn, problems, rollout) for key, (_, fn) in checked.items()}
        return weighted_sum_rewards(values, {key: w for key, (w, _) in checked.items()})

    return reward


def gated(reward_fn: RewardFn, gate_fn: RewardFn, *, otherwise: float = 0.0) -> RewardFn:
    r"""The reward function :math:`R(x, y)\,\mathbb 1[G(x, y)] + c\,(1 - \mathbb 1[G(x, y)])`.

    ``gate_fn`` returns 0/1 (or bool) per response, e.g. ``format_reward``: "correctness only
    counts if the format is valid", or ``correctness_reward``: "a bonus only counts if correct".
    """
    c = require_number("otherwise", otherwise)
    for name, fn in (("reward_fn", reward_fn), ("gate_fn", gate_fn)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable (problems, rollout) -> Tensor[B], got {type(fn).__name__}")

    def reward(problems: Problems, rollout: Rollout) -> Tensor:
        r = _call("reward_fn", reward_fn, problems, rollout)
        g = _gate("gate_fn output", gate_fn(problems, rollout), r.shape[0])
        return torch.where(g, r, torch.full_like(r, c))

    return reward


def clipped(reward_fn: RewardFn, low: float | None = None, high: float | None = None) -> RewardFn:
    r"""The reward function :math:`\min(\max(R(x, y), \ell), h)` (see :func:`clip_rewards`)."""
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable (problems, rollout) -> Tensor[B], got {type(reward_fn).__name__}")
    clip_rewards(torch.zeros(1), low, high)  # validate the bounds now, not at the first call

    def reward(problems: Problems, rollout: Rollout) -> Tensor:
        return clip_rewards(_call("reward_fn", reward_fn, problems, rollout), low, high)

    return reward


def snapped(reward_fn: RewardFn, *, bits: int = 8) -> RewardFn:
    """The reward function ``reward_fn`` rounded to the dyadic grid of :func:`snap_rewards`."""
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be callable (problems, rollout) -> Tensor[B], got {type(reward_fn).__name__}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= 10:
        raise ValueError(f"bits must be an int in [0, 10], got {bits!r}")

    def reward(problems: Problems, rollout: Rollout) -> Tensor:
        return snap_rewards(_call("reward_fn", reward_fn, problems, rollout), bits=bits)

    return reward


# ----------------------------------------------------------------------------- partial credit


def _token_inputs(
    responses: Tensor, response_lengths: Tensor, answers: Tensor, answer_lengths: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    responses = _int_tensor("responses", responses, 2, "[B, R]")
    answers = _int_tensor("answers", answers, 2, "[B, L]")
    batch = responses.shape[0]
    if answers.shape[0] != batch:
        raise ValueError(
            f"responses and answers must have the same batch size B, got {_shape(responses)} and {_shape(answers)}"
        )
    if batch == 0:
        raise ValueError("responses must not be empty (B = 0)")
    response_lengths = _lengths("response_lengths", response_lengths, batch, responses.shape[1])
    answer_lengths = _lengths("answer_lengths", answer_lengths, batch, answers.shape[1])
    if int(answer_lengths.min()) < 1:
        raise ValueError("answer_lengths must be >= 1 (every answer has at least its EOS token)")
    return responses, response_lengths, answers, answer_lengths


def answer_position_matches(
    responses: Tensor, response_lengths: Tensor, answers: Tensor, answer_lengths: Tensor
) -> Tensor:
    r"""``Tensor[B, L]`` bool: :math:`M_{ij} = \mathbb 1[j < |a_i|,\; j < |y_i|,\; y_{ij} = a_{ij}]`.

    Position :math:`j` of response :math:`i` is compared with position :math:`j` of its answer
    (``EOS`` included); positions past either length never match.

    Args:
        responses: ``Tensor[B, R]`` integer tokens, right-padded.
        response_lengths: ``Tensor[B]`` tokens in each response (``EOS`` included).
        answers: ``Tensor[B, L]`` integer reference answers, right-padded.
        answer_lengths: ``Tensor[B]`` tokens in each answer (``>= 1``).
    """
    responses, response_lengths, answers, answer_lengths = _token_inputs(
        responses, response_lengths, answers, answer_lengths
    )
    width = answers.shape[1]
    if responses.shape[1] < width:
        responses = torch.nn.functional.pad(responses, (0, width - responses.shape[1]), value=-1)
    positions = torch.arange(width)[None, :]
    inside = (positions < answer_lengths[:, None]) & (positions < response_lengths[:, None])
    return inside & (responses[:, :width] == answers)


def partial_credit(responses: Tensor, response_lengths: Tensor, answers: Tensor, answer_lengths: Tensor) -> Tensor:
    r"""``Tensor[B]`` float: the fraction of answer positions reproduced, :math:`\frac{1}{|a_i|}\sum_j M_{ij}`.

    It is 1 exactly when the response equals the answer token for token (a response that does
    not end where the answer does misses the answer's ``EOS`` position), and it is dense: a
    response with some right digits scores above 0.
    """
    matches = answer_position_matches(responses, response_lengths, answers, answer_lengths)
    return matches.sum(dim=1).float() / answer_lengths.float()


def prefix_match_length(responses: Tensor, response_lengths: Tensor, answers: Tensor, answer_lengths: Tensor) -> Tensor:
    r"""``Tensor[B]`` long: the number of leading answer tokens matched.

    :math:`k_i = \max\{k : M_{ij} = 1 \text{ for all } j < k\}` with :math:`M` from
    :func:`answer_position_matches`.
    """
    matches = answer_position_matches(responses, response_lengths, answers, answer_lengths)
    return matches.long().cumprod(dim=1).sum(dim=1)


def partial_credit_reward(problems: Problems, rollout: Rollout) -> Tensor:
    """:func:`partial_credit` as a reward function on the toy's ``Problems`` and ``Rollout``."""
    _check_pairing(problems, rollout)
    return partial_credit(rollout.responses, rollout.response_lengths, problems.answers, problems.answer_lengths)


def prefix_credit_reward(problems: Problems, rollout: Rollout) -> Tensor:
    r""":math:`k_i / |a_i|` (:func:`prefix_match_length` over the answer length) as a reward function."""
    _check_pairing(problems, rollout)
    k = prefix_match_length(rollout.responses, rollout.response_lengths, problems.answers, problems.answer_lengths)
    return k.float() / problems.answer_lengths.float()


def _check_pairing(problems: Problems, rollout: Rollout) -> None:
    if len(problems) != rollout.responses.shape[0]:
        raise ValueError(
            f"problems and rollout must have the same batch size, got {len(problems)} and {rollout.responses.shape[0]}"
        )


# ----------------------------------------------------------------------------- shaping


def response_mask(response_lengths: Tensor, width: int | None = None) -> Tensor:
    r"""``Tensor[B, T]`` float: :math:`m_{it} = \mathbb 1[t < n_i]` with :math:`n_i` = ``response_lengths[i]``.

    ``width`` :math:`T` defaults to :math:`\max_i n_i`.
    """
    lengths = _int_tensor("response_lengths", response_lengths, 1, "[B]")
    if lengths.numel() == 0:
        raise ValueError("response_lengths must not be empty")
    if int(lengths.min()) < 0:
        raise ValueError(f"response_lengths must be >= 0, got {int(lengths.min())}")
    longest = int(lengths.max())
    if width is None:
        width = longest
    if isinstance(width, bool) or not isinstance(width, int) or width < longest:
        raise ValueError(f"width must be an int >= max(response_lengths) = {longest}, got {width!r}")
    return (torch.arange(width)[None, :] < lengths[:, None]).float()


def progress_potential(
    responses: Tensor,
    response_lengths: Tensor,
    answers: Tensor,
    answer_lengths: Tensor,
    *,
    scale: float = 1.0,
    terminal_zero: bool = True,
) -> Tensor:
    r"""Potentials ``Tensor[B, R+1]`` (float64) of the states :math:`s_0, \dots, s_R`: progress towards the answer.

    .. math::

        \begin{aligned}
        \Phi(s_t) &= \lambda \min(t, k_i) \quad (t < n_i), \\
        \Phi(s_{n_i}) &= 0 \text{ if terminal\_zero} \\
        &\quad \text{else } \lambda \min(n_i, k_i)
        \end{aligned}

    with :math:`k_i` the :func:`prefix_match_length`, :math:`n_i` the response length and
    :math:`\lambda` = ``scale``: the number of answer tokens reproduced so far (while the prefix is
    still correct). :math:`s_{n_i}` is the terminal state (after ``EOS`` or at the budget);
    columns after it repeat :math:`\Phi(s_{n_i})` and are never used by a masked shaping.
    Ng et al.'s invariance needs :math:`\Phi = 0` at terminal states (``terminal_zero``).
    """
    if not isinstance(terminal_zero, bool):
        raise TypeError(f"terminal_zero must be a bool, got {type(terminal_zero).__name__}")
    lam = require_number("scale", scale)
    k = prefix_match_length(responses, response_lengths, answers, answer_lengths)
    t = torch.arange(responses.shape[1] + 1, dtype=torch.long)[None, :]
    n = response_lengths[:, None]
    phi = lam * torch.minimum(t, k[:, None]).double()
    at_end = lam * torch.minimum(n, k[:, None]).double()
    terminal = torch.zeros_like(at_end) if terminal_zero else at_end
    return torch.where(t < n, phi, terminal)


def potential_shaping(potentials: Tensor, mask: Tensor, *, gamma: float = 1.0) -> Tensor:
    r"""Shaping rewards ``Tensor[B, T]``: :math:`F_t = m_t\,\big(\gamma\,\Phi(s_{t+1}) - \Phi(s_t)\big)`.

    Summed with discounts along an episode they telescope,
    :math:`\sum_{t<n} \gamma^t F_t = \gamma^n \Phi(s_n) - \Phi(s_0)`, which is why they leave the
    optimal policy unchanged when :math:`\Phi(s_n) = 0` at terminal states (Ng et al., 1999).

    Args:
        potentials: ``Tensor[B, T+1]`` float, :math:`\Phi(s_0), \dots, \Phi(s_T)`.
        mask: ``Tensor[B, T]``, 1 on the steps of the episode: ones then zeros in every row.
        gamma: discount :math:`\gamma \in (0, 1]`.
    """
    phi = _float_tensor("potentials", potentials, 2, "[B, T+1]")
    if phi.shape[1] < 2:
        raise ValueError(f"potentials must have at least 2 columns (T >= 1), got {_shape(phi)}")
    g = _check_gamma(gamma)
    m = _prefix_mask("mask", mask, torch.Size((phi.shape[0], phi.shape[1] - 1))).to(phi.dtype)
    return m * (g * phi[:, 1:] - phi[:, :-1])


def discounted_returns(rewards: Tensor, mask: Tensor, *, gamma: float = 1.0) -> Tensor:
    r"""Rewards-to-go ``Tensor[B, T]``: :math:`G_t = m_t \sum_{k \ge t} \gamma^{k-t} m_k r_k`.

    Args:
        rewards: ``Tensor[B, T]`` per-step rewards (a sequence-level reward sits on the last step).
        mask: ``Tensor[B, T]``, ones then zeros in every row.
        gamma: discount :math:`\gamma \in (0, 1]`.
    """
    r = _float_tensor("rewards", rewards, 2, "[B, T]")
    g = _check_gamma(gamma)
    m = _prefix_mask("mask", mask, r.shape).to(r.dtype)
    out = torch.zeros_like(r)
    running = torch.zeros(r.shape[0], dtype=r.dtype)
    for t in range(r.shape[1] - 1, -1, -1):
        running = m[:, t] * r[:, t] + g * running
        out[:, t] = m[:, t] * running
    return out


# ----------------------------------------------------------------------------- evaluation


def expected_correctness(policy: nn.Module, problems: Problems, *, temperature: float = 1.0) -> Tensor:
    r"""``Tensor[B]``: :math:`\mathbb E_{y \sim \pi(\cdot \mid x_i)}[\text{correct}(x_i, y)] = \pi(a_i \mid x_i)`.

    On the toy tasks exactly one response, the reference answer :math:`a_i`, is correct, so the
    expected value of ``correctness_reward`` under sampling is the probability of the answer:
    :math:`\exp \sum_t \log \pi(a_{i,t} \mid x_i, a_{i,<t})`, from one teacher-forced pass
    (no sampling noise). Assumes an unlimited budget (the default budget of ``generate``
    always fits the answer).
    """
    from nemo_rl_theory.toy.policy import join_prompt_response, sequence_logprobs

    t = require_number("temperature", temperature)
    if t <= 0:
        raise ValueError(f"temperature must be > 0, got {t}")
    if len(problems) == 0:
        raise ValueError("problems must not be empty")
    tokens, mask = join_prompt_response(problems, problems.answers, problems.answer_lengths)
    with torch.no_grad():
        logprobs = sequence_logprobs(policy, tokens, temperature=t)
    return torch.where(mask != 0, logprobs, 0.0).sum(dim=1).exp()

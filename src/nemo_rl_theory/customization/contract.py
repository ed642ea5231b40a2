r"""The contract every loss of the library obeys, as a reusable checker.

A loss that NeMo RL can train with must survive being cut up: a global batch is split into
micro-batches (gradient accumulation) and across data-parallel ranks, and the optimizer sees
the *sum* of the pieces' gradients. NeMo RL makes that sum equal the full-batch gradient by
normalising every piece with counts of the whole global batch (``global_valid_toks``,
``global_valid_seqs``; NeMo RL 7ea279a, ``nemo_rl/algorithms/loss/interfaces.py`` and the
``masked_mean(..., global_normalization_factor=...)`` calls of
``nemo_rl/algorithms/loss/loss_functions.py``). :func:`check_loss_contract` checks five clauses
on a batch you give it:

``"microbatch"``
    the batch's rows are split into micro-batches; each piece's loss is computed with the global
    counts; the pieces' losses and accumulated gradients sum to the full-batch loss and gradient
    (the full batch computed with its default, local counts).
``"data_parallel"``
    the rows are split across ``world_size`` ranks; each rank only knows its own rows, so the
    global counts are the all-reduced (summed) local counts; the ranks' losses and the gradients
    of a parameter every rank holds are all-reduced (summed) and must equal the full batch's.
    With ``distributed=True`` this runs in real ``torch.distributed`` processes (gloo backend,
    ``tcp://127.0.0.1`` on a free port, a bounded timeout); otherwise the all-reduce is simulated
    by a sum in this process.
``"gradcheck"``
    :func:`torch.autograd.gradcheck` in float64 on the differentiable inputs.
``"padding"``
    positions that the masks exclude are filled with ``-inf``, ``+inf``, NaN and ``1e30``
    (integer inputs with ``-1`` and ``2**31 - 1``): loss and gradient must not change.
``"bad_input"``
    each bad argument (a list instead of a tensor, one row too many, NaN everywhere, a negative
    global count, plus any you add) must raise ``ValueError``/``TypeError`` whose message names
    the argument.

A loss that breaks a clause on purpose (NeMo RL's VAPO positive-example NLL is normalised by
each micro-batch's own count) declares it with ``declared={"microbatch": "why"}``: the clause is
still run and reported, but its failure is expected and does not raise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from nemo_rl_theory.performance.distributed import run_ranks

#: The clauses, in the order they are checked.
CLAUSES: tuple[str, ...] = ("microbatch", "data_parallel", "gradcheck", "padding", "bad_input")

# A global count as a function of a (sub-)batch, e.g. token_count(). Written out in the public
# signatures (an alias there would be an unresolvable cross-reference in the API reference).
CountFn = Callable[[Mapping[str, Any]], Any]

_FLOAT_FILLS: tuple[float, ...] = (-math.inf, math.inf, math.nan, 1e30)
_INT_FILLS: tuple[int, ...] = (-1, 2**31 - 1)


def token_count(mask: str = "mask", sample_mask: str | None = "sample_mask") -> Callable[[Mapping[str, Any]], Tensor]:
    """Count of valid tokens, :math:`\\sum_{b,t} m_{b,t} s_b` (``global_valid_toks``).

    ``sample_mask`` is used when the batch holds it (and it is not ``None``).
    """

    def count(batch: Mapping[str, Any]) -> Tensor:
        m = torch.as_tensor(batch[mask]).to(torch.float64)
        s = batch.get(sample_mask) if sample_mask is not None else None
        if s is not None:
            m = m * torch.as_tensor(s).to(torch.float64).reshape(-1, *([1] * (m.dim() - 1)))
        return m.sum()

    return count


def row_count(mask: str | None = "sample_mask", *, rows_of: str | None = None) -> Callable[[Mapping[str, Any]], Tensor]:
    """Count of valid rows (``global_valid_seqs``, ``global_valid_pairs``).

    The sum of the ``[B]`` mask ``mask`` when the batch holds it, else the number of rows of
    ``rows_of``.
    """

    def count(batch: Mapping[str, Any]) -> Tensor:
        m = batch.get(mask) if mask is not None else None
        if m is not None:
            return torch.as_tensor(m).to(torch.float64).sum()
        if rows_of is None:
            raise ValueError("row_count: the batch has no row mask; pass rows_of=<a per-row argument>")
        return torch.tensor(float(torch.as_tensor(batch[rows_of]).shape[0]), dtype=torch.float64)

    return count


@dataclass
class ClauseResult:
    """Outcome of one clause: whether it held, the largest discrepancy seen and a description."""

    name: str
    passed: bool
    detail: str
    max_error: float = 0.0
    #: The reason given in ``declared`` when the loss declares that it breaks this clause.
    declared: str | None = None

    @property
    def ok(self) -> bool:
        """Held, or failed as declared."""
        return self.passed or self.declared is not None


@dataclass
class ContractReport:
    """What :func:`check_loss_contract` found, one :class:`ClauseResult` per clause run."""

    name: str
    clauses: dict[str, ClauseResult] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every clause held, or failed as declared."""
        return all(c.ok for c in self.clauses.values())

    @property
    def failures(self) -> list[str]:
        """Clauses that failed without a declaration."""
        return [n for n, c in self.clauses.items() if not c.ok]

    def rows(self) -> list[tuple[str, str, float, str]]:
        """``(clause, verdict, max_error, detail)`` per clause; verdict ``held`` / ``FAILED`` /
        ``fails as declared`` / ``holds despite declaration``."""
        out = []
        for n, c in self.clauses.items():
            if c.declared is None:
                verdict = "held" if c.passed else "FAILED"
            else:
                verdict = "holds despite declaration" if c.passed else "fails as declared"
            out.append((n, verdict, c.max_error, c.detail))
        return out

    def __str__(self) -> str:
        lines = [f"loss contract of {self.name}:"]
        for n, verdict, err, detail in self.rows():
            lines.append(f"  {n:<14} {verdict:<26} max err {err:.2e}  {detail}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _loss_of(out: object) -> Tensor:
    loss = out[0] if isinstance(out, tuple) else out
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise TypeError("loss_fn must return a scalar tensor or a (scalar tensor, metrics) tuple")
    return loss


def _as_float64(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (v.detach().to(torch.float64) if isinstance(v, Tensor) and v.is_floating_point() else v)
        for k, v in batch.items()
    }


def _select_rows(batch: Mapping[str, Any], row_keys: Sequence[str], idx: Tensor) -> dict[str, Any]:
    return {k: (v[idx] if k in row_keys else v) for k, v in batch.items()}


def _counts(counts: Mapping[str, CountFn], batch: Mapping[str, Any]) -> dict[str, Tensor]:
    return {k: torch.as_tensor(f(batch), dtype=torch.float64).reshape(()) for k, f in counts.items()}


def _max_err(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    d = (a - b).abs()
    if not torch.isfinite(d).all():
        return math.inf
    return float(d.max())


def _close(a: Tensor, b: Tensor, rtol: float, atol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def _full_loss_and_grads(
    loss_fn: Callable[..., Any], batch: Mapping[str, Any], wrt: Sequence[str], extra: Mapping[str, Any]
) -> tuple[Tensor, dict[str, Tensor]]:
    leaves = {n: batch[n].detach().clone().requires_grad_(True) for n in wrt}
    loss = _loss_of(loss_fn(**{**batch, **leaves, **extra}))
    grads = torch.autograd.grad(loss, [leaves[n] for n in wrt], allow_unused=True)
    return loss.detach(), {
        n: (torch.zeros_like(leaves[n]) if g is None else g) for n, g in zip(wrt, grads, strict=True)
    }


def _split_loss_and_grads(
    loss_fn: Callable[..., Any],
    batch: Mapping[str, Any],
    wrt: Sequence[str],
    row_keys: Sequence[str],
    parts: Sequence[Tensor],
    global_counts: Mapping[str, Tensor],
) -> tuple[Tensor, dict[str, Tensor]]:
    """Sum of the pieces' losses; gradients accumulated into one full-size parameter per input."""
    params = {n: batch[n].detach().clone().requires_grad_(True) for n in wrt}
    total = torch.zeros((), dtype=torch.float64)
    for idx in parts:
        piece = _select_rows(batch, row_keys, idx)
        piece.update({n: params[n][idx] for n in wrt})
        loss = _loss_of(loss_fn(**{**piece, **global_counts}))
        if loss.requires_grad:
            loss.backward()
        total = total + loss.detach().to(torch.float64)
    return total, {n: (torch.zeros_like(p) if p.grad is None else p.grad) for n, p in params.items()}


def _compare(
    name: str,
    ref_loss: Tensor,
    ref_grads: Mapping[str, Tensor],
    loss: Tensor,
    grads: Mapping[str, Tensor],
    rtol: float,
    atol: float,
    what: str,
) -> ClauseResult:
    errs = {"loss": _max_err(loss.to(torch.float64), ref_loss.to(torch.float64))}
    ok = _close(loss.to(torch.float64), ref_loss.to(torch.float64), rtol, atol)
    for n, g in ref_grads.items():
        errs[f"grad {n}"] = _max_err(grads[n], g)
        ok = ok and _close(grads[n], g, rtol, atol)
    worst = max(errs, key=lambda k: errs[k])
    if ok:
        detail = f"{what}: loss and gradients equal the full batch's"
    else:
        detail = f"{what}: {worst} differs from the full batch's by {errs[worst]:.3g}"
    return ClauseResult(name, ok, detail, max(errs.values()))


def _dp_rank(
    rank: int,
    world_size: int,
    *,
    loss_fn: Callable[..., Any],
    batch: Mapping[str, Any],
    wrt: Sequence[str],
    row_keys: Sequence[str],
    shards: Sequence[Tensor],
    counts: Mapping[str, CountFn],
) -> tuple[float, dict[str, Any]]:
    """One data-parallel rank: local counts all-reduced, own rows' loss, gradients all-reduced."""
    import torch.distributed as dist

    shard = shards[rank]
    params = {n: batch[n].detach().clone().requires_grad_(True) for n in wrt}
    piece = _select_rows(batch, row_keys, shard)
    piece.update({n: params[n][shard] for n in wrt})
    global_counts = _counts(counts, piece)
    for c in global_counts.values():
        dist.all_reduce(c)  # SUM: every rank now holds the global count
    loss = _loss_of(loss_fn(**{**piece, **global_counts}))
    if loss.requires_grad:
        loss.backward()
    total = loss.detach().to(torch.float64).clone()
    dist.all_reduce(total)
    grads = {}
    for n, p in params.items():
        g = torch.zeros_like(p) if p.grad is None else p.grad.clone()
        dist.all_reduce(g)
        grads[n] = g.numpy()
    return float(total), grads


def _run_distributed(
    loss_fn: Callable[..., Any],
    batch: Mapping[str, Any],
    wrt: Sequence[str],
    row_keys: Sequence[str],
    shards: Sequence[Tensor],
    counts: Mapping[str, CountFn],
    timeout_s: float,
    start_method: str,
) -> tuple[Tensor, dict[str, Tensor]]:
    body = functools.partial(
        _dp_rank, loss_fn=loss_fn, batch=batch, wrt=wrt, row_keys=row_keys, shards=shards, counts=counts
    )
    try:
        results = run_ranks(body, len(shards), timeout_s=timeout_s, start_method=start_method)
    except RuntimeError as exc:
        raise RuntimeError(f"data-parallel run failed: {exc}") from exc
    total, grads = results[0]
    return torch.tensor(total, dtype=torch.float64), {n: torch.from_numpy(g) for n, g in grads.items()}


def _padding_positions(spec: str | Callable[[Mapping[str, Any]], Tensor], batch: Mapping[str, Any]) -> Tensor:
    if callable(spec):
        return torch.as_tensor(spec(batch)).to(torch.bool)
    return torch.as_tensor(batch[spec]) == 0


def _fill(t: Tensor, where: Tensor, value: float) -> Tensor:
    w = where.reshape(*where.shape, *([1] * (t.dim() - where.dim()))).expand_as(t)
    return torch.where(w, torch.full_like(t, value), t)


def _default_bad_inputs(batch: Mapping[str, Any], counts: Mapping[str, CountFn]) -> list[tuple[str, object, str]]:
    bad: list[tuple[str, object, str]] = []
    for k, v in batch.items():
        if not isinstance(v, Tensor):
            continue
        bad.append((k, v.tolist(), "a list instead of a tensor"))
        if v.dim() >= 1:
            bad.append((k, torch.cat([v, v[:1]]), "one row too many"))
        if v.is_floating_point():
            bad.append((k, torch.full_like(v, math.nan), "NaN everywhere"))
    for k in counts:
        bad.append((k, -1.0, "a negative global count"))
    return bad


# --------------------------------------------------------------------------- the checker


def check_loss_contract(
    loss_fn: Callable[..., Any],
    batch: Mapping[str, Any],
    *,
    wrt: Sequence[str],
    counts: Mapping[str, Callable[[Mapping[str, Any]], Any]],
    padding: Mapping[str, str | Callable[[Mapping[str, Any]], Tensor]] | None = None,
    rows: Sequence[str] | None = None,
    microbatches: int | Sequence[Sequence[int]] = 2,
    world_size: int = 2,
    distributed: bool = False,
    start_method: str = "fork",
    timeout_s: float = 60.0,
    bad_inputs: Sequence[tuple[str, object]] | None = None,
    default_bad_inputs: bool = True,
    declared: Mapping[str, str] | None = None,
    clauses: Sequence[str] = CLAUSES,
    rtol: float = 1e-7,
    atol: float = 1e-10,
    name: str | None = None,
) -> ContractReport:
    r"""Check that ``loss_fn`` obeys the loss contract on ``batch``; raise if a clause fails.

    Every float tensor of ``batch`` is cast to float64 first, so the tolerances measure the
    loss, not rounding.

    Args:
        loss_fn: called as ``loss_fn(**batch, **global_counts)``; returns a scalar tensor or
            ``(loss, metrics)``. Wrap a loss with extra settings in a ``functools.partial`` or a
            closure.
        batch: the keyword arguments of one full batch (tensors and settings).
        wrt: the differentiable arguments (e.g. ``("logprobs",)``, ``("student_logits",)``).
        counts: the global-count arguments and how to count them on a (sub-)batch, e.g.
            ``{"global_valid_toks": token_count()}``; see :func:`token_count`, :func:`row_count`.
        padding: argument -> the mask (name of a batch entry, 0 = padding) or a function of the
            batch returning a bool tensor (True = padding) whose positions the ``"padding"``
            clause fills with garbage. ``None``: the clause checks nothing and says so.
        rows: the arguments split by rows (dim 0); default: every tensor whose first dim equals
            that of ``wrt[0]``.
        microbatches: number of contiguous micro-batches, or the row indices of each (every
            row in exactly one non-empty piece).
        world_size: data-parallel ranks; rows are dealt round-robin (rank ``r`` gets rows
            ``r, r + W, ...``).
        distributed: run the ``"data_parallel"`` clause in ``world_size`` real processes
            (gloo); ``loss_fn`` and ``batch`` must be picklable unless ``start_method`` is
            ``"fork"``. ``False``: simulate the all-reduce with a sum.
        start_method: multiprocessing start method for ``distributed``.
        timeout_s: bound on the distributed run (process group timeout and join).
        bad_inputs: extra ``(argument, bad value)`` pairs for the ``"bad_input"`` clause.
        default_bad_inputs: also try, for every tensor argument, a list, one row too many and
            (float) NaN everywhere, and a negative value for every count.
        declared: clause -> reason, for clauses the loss breaks on purpose.
        clauses: the clauses to run (default all, ``CLAUSES``).
        rtol, atol: tolerances of the comparisons (``torch.allclose``).
        name: name used in the report (default ``loss_fn.__name__``).

    Returns:
        A :class:`ContractReport`.

    Raises:
        AssertionError: naming every clause that failed without a declaration, with the
            report's text; the report is attached as ``error.report``.
        ValueError: unknown clause names, ``wrt`` not in ``batch``, fewer rows than pieces or
            pieces that do not split the rows.
        TypeError: ``loss_fn`` does not return a scalar tensor on the full batch.
    """
    declared = dict(declared or {})
    unknown = (set(clauses) | set(declared)) - set(CLAUSES)
    if unknown:
        raise ValueError(f"unknown clause(s) {sorted(unknown)}; the clauses are {CLAUSES}")
    if not wrt or any(n not in batch or not isinstance(batch[n], Tensor) for n in wrt):
        raise ValueError(f"wrt must name tensor arguments of batch, got {list(wrt)}")
    batch = _as_float64(batch)
    n_rows = batch[wrt[0]].shape[0]
    row_keys = (
        list(rows)
        if rows is not None
        else [k for k, v in batch.items() if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == n_rows]
    )
    if isinstance(microbatches, int):
        if not 1 <= microbatches <= n_rows:
            raise ValueError(f"microbatches must be in [1, {n_rows}] (the rows of the batch), got {microbatches}")
        mb_parts = list(torch.arange(n_rows).tensor_split(microbatches))
    else:
        mb_parts = [torch.as_tensor(list(p), dtype=torch.long) for p in microbatches]
        covered = sorted(int(i) for p in mb_parts for i in p)
        if covered != list(range(n_rows)) or any(len(p) == 0 for p in mb_parts):
            raise ValueError(
                f"microbatches must split the rows 0..{n_rows - 1} into non-empty pieces, each row once, "
                f"got {[p.tolist() for p in mb_parts]}"
            )
    if not 1 <= world_size <= n_rows:
        raise ValueError(f"world_size must be in [1, {n_rows}] (the rows of the batch), got {world_size}")
    shards = [torch.arange(r, n_rows, world_size) for r in range(world_size)]
    fn = loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn
    report = ContractReport(name or getattr(fn, "__name__", type(fn).__name__))

    ref_loss, ref_grads = _full_loss_and_grads(loss_fn, batch, wrt, {})
    full_counts = _counts(counts, batch)

    for clause in clauses:
        try:
            if clause == "microbatch":
                loss, grads = _split_loss_and_grads(loss_fn, batch, wrt, row_keys, mb_parts, full_counts)
                sizes = "+".join(str(len(p)) for p in mb_parts)
                result = _compare(
                    clause,
                    ref_loss,
                    ref_grads,
                    loss,
                    grads,
                    rtol,
                    atol,
                    f"{len(mb_parts)} micro-batches ({sizes} rows) with global counts",
                )
            elif clause == "data_parallel":
                if distributed:
                    loss, grads = _run_distributed(
                        loss_fn, batch, wrt, row_keys, shards, counts, timeout_s, start_method
                    )
                    how = f"{world_size} gloo ranks, all_reduce of counts, losses, gradients"
                else:
                    summed = {
                        k: sum(_counts(counts, _select_rows(batch, row_keys, s))[k] for s in shards) for k in counts
                    }
                    loss, grads = _split_loss_and_grads(loss_fn, batch, wrt, row_keys, shards, summed)
                    how = f"{world_size} simulated ranks, counts summed over ranks"
                result = _compare(clause, ref_loss, ref_grads, loss, grads, rtol, atol, how)
            elif clause == "gradcheck":

                def as_fn(*xs: Tensor) -> Tensor:
                    return _loss_of(loss_fn(**{**batch, **dict(zip(wrt, xs, strict=True))}))

                inputs = tuple(batch[n].detach().clone().requires_grad_(True) for n in wrt)
                try:
                    ok = torch.autograd.gradcheck(as_fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, raise_exception=True)
                    result = ClauseResult(clause, bool(ok), "float64 analytic gradient = finite differences")
                except Exception as exc:  # GradcheckError is a RuntimeError
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    result = ClauseResult(clause, False, f"gradcheck failed: {first}", math.inf)
            elif clause == "padding":
                if not padding:
                    result = ClauseResult(clause, True, "no padded arguments given (nothing checked)")
                else:
                    worst, failed = 0.0, []
                    for fill_index, fill in enumerate(_FLOAT_FILLS):
                        dirty = dict(batch)
                        for arg, spec in padding.items():
                            t = batch[arg]
                            value = fill if t.is_floating_point() else _INT_FILLS[fill_index % len(_INT_FILLS)]
                            dirty[arg] = _fill(t, _padding_positions(spec, batch), value)
                        try:
                            loss, grads = _full_loss_and_grads(loss_fn, dirty, wrt, {})
                        except Exception as exc:
                            worst = math.inf
                            failed.append(f"fill {fill} raised {type(exc).__name__}: {exc}")
                            continue
                        pairs = [("loss", loss, ref_loss)] + [(f"grad {n}", grads[n], ref_grads[n]) for n in wrt]
                        for what, a, b in pairs:
                            worst = max(worst, _max_err(a, b))
                            if not _close(a, b, rtol, atol):
                                failed.append(f"fill {fill} changes the {what}")
                    passed = not failed
                    args = ", ".join(padding)
                    detail = (
                        f"padding of {args} filled with -inf/+inf/NaN/1e30: loss and gradients unchanged"
                        if passed
                        else f"padding of {args}: {'; '.join(failed)}"
                    )
                    result = ClauseResult(clause, passed, detail, worst)
            else:  # bad_input
                cases = _default_bad_inputs(batch, counts) if default_bad_inputs else []
                cases += [(k, v, "given") for k, v in (bad_inputs or [])]
                silent: list[str] = []
                unnamed: list[str] = []
                for arg, value, why in cases:
                    kwargs = {**batch, arg: value}
                    try:
                        loss_fn(**kwargs)
                    except (ValueError, TypeError) as exc:
                        if arg.lower() not in str(exc).lower():
                            unnamed.append(f"{arg} ({why}): {type(exc).__name__}: {exc}")
                        continue
                    except Exception as exc:
                        unnamed.append(f"{arg} ({why}): {type(exc).__name__} instead of ValueError/TypeError: {exc}")
                        continue
                    silent.append(f"{arg} ({why})")
                passed = not silent and not unnamed
                if passed:
                    detail = f"{len(cases)} bad arguments, each rejected by an error naming it"
                else:
                    detail = "; ".join(
                        [f"accepted silently: {s}" for s in silent] + [f"error does not name it: {u}" for u in unnamed]
                    )
                result = ClauseResult(clause, passed, detail, 0.0 if passed else math.inf)
        except Exception as exc:  # a loss that raises on a piece breaks the clause
            result = ClauseResult(clause, False, f"raised {type(exc).__name__}: {exc}", math.inf)
        if clause in declared:
            result.declared = declared[clause]
        report.clauses[clause] = result

    if report.failures:
        error = AssertionError(f"loss contract broken: clause(s) {report.failures} failed\n{report}")
        error.report = report  # type: ignore[attr-defined]
        raise error
    return report

"""Order conditions of every Runge–Kutta tableau in :data:`neurode.solvers.tableaux.TABLEAUX`.

Butcher's theory: weights ``w`` over stages with matrix ``A`` give order ``p`` iff
``Σ_j w_j Φ_j(t) = 1/γ(t)`` for every rooted tree ``t`` with at most ``p`` nodes, where the
elementary weights are ``Φ(•) = 1`` and ``Φ([t_1, …, t_m]) = Π_k A Φ(t_k)`` (componentwise), and
``γ([t_1, …, t_m]) = |t| Π_k γ(t_k)``. A continuous extension ``b_j(θ)`` has order ``p`` iff
``Σ_j b_j(θ) Φ_j(t) = θ^|t| / γ(t)`` for those trees and every ``θ``.

Residuals are compared with the size of the terms being summed, ``Σ_j |w_j| Φ_j(t)`` computed with
``|A|``, which bounds what rounding can produce; ``RTOL`` is about 450 machine epsilons.
"""

from __future__ import annotations

import numpy as np
import pytest

from neurode.solvers.tableaux import TABLEAUX, ButcherTableau

RTOL = 1e-13
MAX_TREE_ORDER = 10  # order-9 conditions for vern9, plus one order to check orders are exact
THETAS = (0.1, 1 / 3, 0.5, 0.77, 0.9)
# A claimed order is exact when some condition of the next order is missed by at least this much
# (relative to 1/γ); genuine defects are >= 1e-3 here, rounding is ~1e-13.
MIN_LEADING_DEFECT = 1e-6

# DOP853 has two embedded solutions (orders 5 and 3) combined as err5² / sqrt(err5² + 0.01 err3²);
# its ``embedded_order`` is the order implied for that combination, not an embedded order.
COMBINED_ESTIMATOR_ORDERS = {"dopri8": {"b_error": 5, "b_error_low": 3}}


# --- rooted trees ------------------------------------------------------------------------------


def _rooted_trees(max_order: int):
    """All rooted trees with at most ``max_order`` nodes, each once.

    Tree ``i`` is given by ``children[i]``: a non-decreasing tuple of indices of its subtrees, so
    each multiset of subtrees appears once. Returns ``(children, order, gamma)``.
    """
    children: list[tuple[int, ...]] = [()]
    order = [1]
    for n in range(2, max_order + 1):
        smaller = len(children)  # every tree with fewer than n nodes

        def forests(weight, first, smaller=smaller):
            if weight == 0:
                yield ()
                return
            for i in range(first, smaller):
                if order[i] <= weight:
                    for rest in forests(weight - order[i], i):
                        yield (i, *rest)

        for forest in list(forests(n - 1, 0)):
            children.append(forest)
            order.append(n)
    gamma = []
    for kids, n in zip(children, order, strict=True):
        g = n
        for k in kids:
            g *= gamma[k]
        gamma.append(g)
    return children, order, gamma


CHILDREN, ORDER, GAMMA = _rooted_trees(MAX_TREE_ORDER)


def _tree_label(i: int) -> str:
    kids = CHILDREN[i]
    return "•" if not kids else "[" + ",".join(_tree_label(k) for k in kids) + "]"


def _elementary_weights(A: np.ndarray, max_order: int) -> list[np.ndarray | None]:
    """``Φ(t)`` as a vector over stages, for each tree with at most ``max_order`` nodes."""
    phi: list[np.ndarray | None] = []
    for kids, n in zip(CHILDREN, ORDER, strict=True):
        if n > max_order:
            phi.append(None)
            continue
        v = np.ones(A.shape[0])
        for k in kids:
            v = v * (A @ phi[k])
        phi.append(v)
    return phi


def _condition_failures(A, w, max_order, *, theta=1.0, w_abs=None) -> list[str]:
    """Trees with ``|t| <= max_order`` whose condition ``w·Φ(t) = θ^|t|/γ(t)`` fails."""
    w = np.asarray(w, dtype=float)
    w_abs = np.abs(w) if w_abs is None else np.asarray(w_abs, dtype=float)
    phi = _elementary_weights(A, max_order)
    phi_abs = _elementary_weights(np.abs(A), max_order)
    failures = []
    for t, n in enumerate(ORDER):
        if n > max_order:
            continue
        residual = w @ phi[t] - theta**n / GAMMA[t]
        scale = w_abs @ phi_abs[t]
        if not abs(residual) <= RTOL * scale:
            failures.append(
                f"order {n} tree {_tree_label(t)}: residual {residual:.3e} (scale {scale:.3e})"
            )
    return failures


def _leading_defect(A, w, order: int) -> float:
    """Largest ``γ(t) |w·Φ(t) − 1/γ(t)|`` over the trees with exactly ``order`` nodes."""
    phi = _elementary_weights(A, order)
    w = np.asarray(w, dtype=float)
    return max(
        abs(w @ phi[t] - 1 / GAMMA[t]) * GAMMA[t] for t, n in enumerate(ORDER) if n == order
    )


# --- tableau views -----------------------------------------------------------------------------


def _stage_matrix(tab: ButcherTableau) -> np.ndarray:
    A = np.zeros((tab.stages, tab.stages))
    for i, row in enumerate(tab.a):
        A[i, : len(row)] = row
    return A


def _with_f1_stage(tab: ButcherTableau) -> np.ndarray:
    """Stage matrix extended by ``f(t0 + h, y1)``: a stage with ``c = 1`` and row ``b``."""
    S = tab.stages
    A = np.zeros((S + 1, S + 1))
    A[:S, :S] = _stage_matrix(tab)
    A[S, :S] = tab.b
    return A


def _dense_stages(tab: ButcherTableau) -> tuple[np.ndarray, np.ndarray, int]:
    """Matrix and nodes of the dense stages, and the index of ``f(t0 + h, y1)`` among them."""
    S = tab.stages
    f1 = S - 1 if tab.fsal else S
    n = f1 + 1 + len(tab.extra_c)
    A = np.zeros((n, n))
    A[:S, :S] = _stage_matrix(tab)
    c = [*tab.c]
    if not tab.fsal:
        A[S, :S] = tab.b
        c.append(1.0)
    for i, (ci, row) in enumerate(zip(tab.extra_c, tab.extra_a, strict=True), start=f1 + 1):
        A[i, : len(row)] = row
        c.append(ci)
    return A, np.array(c), f1


def _dense_weights(tab: ButcherTableau, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """``b_j(θ)`` and ``Σ_p |dense[j][p]| θ^(p+1)`` (its rounding scale) for each dense stage."""
    D = np.array(tab.dense, dtype=float)
    powers = theta ** np.arange(1, D.shape[1] + 1)
    return D @ powers, np.abs(D) @ powers


def _padded_b(tab: ButcherTableau, n: int) -> np.ndarray:
    b = np.zeros(n)
    b[: tab.stages] = tab.b
    return b


def _embedded_order(name: str, attr: str) -> int:
    if name in COMBINED_ESTIMATOR_ORDERS:
        return COMBINED_ESTIMATOR_ORDERS[name][attr]
    return TABLEAUX[name].embedded_order


def _embedded_view(tab: ButcherTableau, attr: str) -> tuple[np.ndarray, np.ndarray]:
    """Stage matrix and weights ``b̂ = b − estimate`` of an embedded solution."""
    est = np.array(getattr(tab, attr), dtype=float)
    if len(est) == tab.stages:
        return _stage_matrix(tab), np.array(tab.b) - est
    return _with_f1_stage(tab), _padded_b(tab, tab.stages + 1) - est


# --- parametrisation ---------------------------------------------------------------------------

ALL = [pytest.param(name, id=name) for name in TABLEAUX]
BY_ORDER = [pytest.param(name, id=f"{name}-order{t.order}") for name, t in TABLEAUX.items()]
ESTIMATES = [
    pytest.param(name, attr, id=f"{name}-{attr}-order{_embedded_order(name, attr)}")
    for name, t in TABLEAUX.items()
    for attr in ("b_error", "b_error_low")
    if getattr(t, attr) is not None
]
FSAL = [pytest.param(name, id=name) for name, t in TABLEAUX.items() if t.fsal]
DENSE = [pytest.param(name, id=name) for name, t in TABLEAUX.items() if t.dense is not None]
DENSE_BY_ORDER = [
    pytest.param(name, id=f"{name}-order{t.dense_order}")
    for name, t in TABLEAUX.items()
    if t.dense is not None
]


# --- tests -------------------------------------------------------------------------------------


def test_rooted_tree_counts_match_known_sequence():
    # OEIS A000081: number of rooted trees with n nodes.
    counts = [ORDER.count(n) for n in range(1, MAX_TREE_ORDER + 1)]
    assert counts == [1, 1, 2, 4, 9, 20, 48, 115, 286, 719][:MAX_TREE_ORDER]


def test_gamma_of_small_trees_is_standard():
    gammas = {_tree_label(t): GAMMA[t] for t in range(len(ORDER)) if ORDER[t] <= 4}
    assert gammas == {"•": 1, "[•]": 2, "[•,•]": 3, "[[•]]": 6, "[•,•,•]": 4, "[•,[•]]": 8,
                      "[[•,•]]": 12, "[[[•]]]": 24}


def test_registry_includes_dopri8():
    assert TABLEAUX["dopri8"].order == 8


@pytest.mark.parametrize("name", ALL)
def test_tableau_arrays_have_consistent_shapes(name):
    tab = TABLEAUX[name]
    S = tab.stages
    assert len(tab.b) == S
    assert [len(row) for row in tab.a] == list(range(S))
    if tab.b_error is not None:
        assert tab.embedded_order is not None
        assert len(tab.b_error) in (S, S + 1)
    if tab.b_error_low is not None:
        assert tab.b_error is not None
        assert len(tab.b_error_low) == len(tab.b_error)
    assert len(tab.extra_a) == len(tab.extra_c)
    if tab.dense is not None:
        A, _, f1 = _dense_stages(tab)
        assert [len(row) for row in tab.extra_a] == list(range(f1 + 1, A.shape[0]))
        assert len(tab.dense) == A.shape[0]
        assert len({len(row) for row in tab.dense}) == 1
        assert tab.dense_order is not None
    else:
        assert tab.extra_c == ()


@pytest.mark.parametrize("name", ALL)
def test_nodes_equal_row_sums_of_stage_matrix(name):
    tab = TABLEAUX[name]
    if tab.dense is not None:  # includes f(t0+h, y1) and the extra dense stages
        A, c, _ = _dense_stages(tab)
    else:
        A, c = _stage_matrix(tab), np.array(tab.c)
    residual = np.abs(A.sum(axis=1) - c)
    scale = np.maximum(np.abs(A).sum(axis=1), np.abs(c))
    bad = np.flatnonzero(~(residual <= RTOL * scale))
    assert bad.size == 0, [(int(i), float(residual[i])) for i in bad]


@pytest.mark.parametrize("name", BY_ORDER)
def test_weights_satisfy_order_conditions_up_to_method_order(name):
    tab = TABLEAUX[name]
    failures = _condition_failures(_stage_matrix(tab), tab.b, tab.order)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", BY_ORDER)
def test_method_order_is_exact(name):
    tab = TABLEAUX[name]
    assert _leading_defect(_stage_matrix(tab), tab.b, tab.order + 1) > MIN_LEADING_DEFECT


@pytest.mark.parametrize(("name", "attr"), ESTIMATES)
def test_error_estimate_weights_sum_to_zero(name, attr):
    est = getattr(TABLEAUX[name], attr)
    assert abs(sum(est)) <= RTOL * sum(abs(x) for x in est)


@pytest.mark.parametrize(("name", "attr"), ESTIMATES)
def test_embedded_solution_satisfies_order_conditions_of_its_order(name, attr):
    tab = TABLEAUX[name]
    A, b_hat = _embedded_view(tab, attr)
    failures = _condition_failures(A, b_hat, _embedded_order(name, attr))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("name", "attr"), ESTIMATES)
def test_error_estimate_has_nonzero_leading_term(name, attr):
    tab = TABLEAUX[name]
    A, b_hat = _embedded_view(tab, attr)
    assert _leading_defect(A, b_hat, _embedded_order(name, attr) + 1) > MIN_LEADING_DEFECT


def test_every_double_estimator_has_known_embedded_orders():
    doubles = {name for name, t in TABLEAUX.items() if t.b_error_low is not None}
    assert doubles == set(COMBINED_ESTIMATOR_ORDERS)


@pytest.mark.parametrize("name", list(COMBINED_ESTIMATOR_ORDERS))
def test_combined_error_estimate_order_matches_the_error_order(name):
    # err_hi = O(h^(p_hi+1)), err_lo = O(h^(p_lo+1)), so err_hi²/sqrt(err_hi² + 0.01 err_lo²)
    # = O(h^(2(p_hi+1) − (p_lo+1))): dop853's 8(5,3) estimate is O(h^8), exponent 1/8.
    orders = COMBINED_ESTIMATOR_ORDERS[name]
    expected = 2 * (orders["b_error"] + 1) - (orders["b_error_low"] + 1)
    tab = TABLEAUX[name]
    assert tab.error_order == expected
    assert tab.error_order <= tab.order


@pytest.mark.parametrize("name", FSAL)
def test_fsal_last_stage_is_the_propagated_solution(name):
    tab = TABLEAUX[name]
    assert tab.c[-1] == 1
    assert tab.a[-1] == tab.b[:-1]
    assert tab.b[-1] == 0


@pytest.mark.parametrize("name", DENSE)
def test_dense_output_vanishes_at_step_start(name):
    weights, _ = _dense_weights(TABLEAUX[name], 0.0)
    assert np.all(weights == 0)


@pytest.mark.parametrize("name", DENSE)
def test_dense_output_reproduces_step_weights_at_step_end(name):
    tab = TABLEAUX[name]
    weights, scale = _dense_weights(tab, 1.0)
    expected = _padded_b(tab, len(weights))  # f(t0+h, y1) and extra stages weigh 0 at θ = 1
    residual = np.abs(weights - expected)
    bad = np.flatnonzero(~(residual <= RTOL * scale))
    assert bad.size == 0, [(int(j), float(residual[j])) for j in bad]


@pytest.mark.parametrize("name", DENSE)
def test_dense_output_slope_is_f0_at_start_and_f1_at_end(name):
    # y'(t0) = f(t0, y0) = k_0 and y'(t0 + h) = f(t0 + h, y1): the interpolant is C¹ across steps.
    tab = TABLEAUX[name]
    D = np.array(tab.dense, dtype=float)
    p = np.arange(1, D.shape[1] + 1)
    _, _, f1 = _dense_stages(tab)
    for slope, scale, stage in ((D[:, 0], np.abs(D[:, 0]), 0), (D @ p, np.abs(D) @ p, f1)):
        expected = np.zeros(len(D))
        expected[stage] = 1.0
        residual = np.abs(slope - expected)
        bad = np.flatnonzero(~(residual <= RTOL * np.maximum(scale, 1.0)))
        assert bad.size == 0, (stage, [(int(j), float(residual[j])) for j in bad])


@pytest.mark.parametrize("theta", THETAS, ids=lambda th: f"theta{th:.3g}")
@pytest.mark.parametrize("name", DENSE_BY_ORDER)
def test_dense_output_satisfies_continuous_order_conditions(name, theta):
    tab = TABLEAUX[name]
    A, _, _ = _dense_stages(tab)
    weights, scale = _dense_weights(tab, theta)
    failures = _condition_failures(A, weights, tab.dense_order, theta=theta, w_abs=scale)
    assert not failures, "\n".join(failures)


def test_checker_detects_a_perturbed_coefficient():
    # A relative change of 1e-10 in one stage-matrix entry of dopri8 must break some condition.
    tab = TABLEAUX["dopri8"]
    A = _stage_matrix(tab)
    A[8, 5] *= 1 + 1e-10
    assert _condition_failures(A, tab.b, tab.order)


def test_an_inconsistent_user_tableau_raises_the_named_input_error():
    from neurode.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="b has 1 entries for 2 stages"):
        ButcherTableau(name="bad", order=2, c=(0.0, 1.0), a=((), (1.0,)), b=(1.0,))

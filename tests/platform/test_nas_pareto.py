"""The accuracy–cost Pareto front of a NAS, the constrained winner ("best AP under 30 ms"), the
front's plot and CSV table (detflow.archsearch.pareto), on hand-made trial rows."""
import csv
import io
import math

import pytest

from detflow.archsearch.pareto import choose_winner, front_table, pareto_front, plot_pareto, valid_number

AP, MS = "val/bbox_mAP", "latency_ms"
OBJ = [(AP, "max"), (MS, "min")]


def _r(trial, ap, ms):
    return {"trial": trial, AP: ap, MS: ms}


ROWS = [_r(0, 0.30, 10.0), _r(1, 0.40, 20.0), _r(2, 0.35, 25.0),   # 2 dominated by 1
        _r(3, 0.50, 40.0), _r(4, 0.40, 20.0),                      # 4 ties 1 on both: both kept
        _r(5, float("nan"), 1.0), _r(6, 0.90, None), _r(7, 0.20, 10.0)]  # 5, 6 invalid; 7 dominated by 0


def test_front_keeps_non_dominated_rows_and_ties_and_drops_nan_or_missing():
    front = pareto_front(ROWS, OBJ)
    assert [r["trial"] for r in front] == [0, 1, 3, 4]


def test_front_respects_each_objectives_direction():
    rows = [_r(0, 0.3, 10.0), _r(1, 0.4, 20.0)]
    assert [r["trial"] for r in pareto_front(rows, [(AP, "max"), (MS, "max")])] == [1]
    assert [r["trial"] for r in pareto_front(rows, [(AP, "min"), (MS, "min")])] == [0]
    assert [r["trial"] for r in pareto_front(rows, [(AP, "max")])] == [1]     # one objective: the best
    assert pareto_front([], OBJ) == []


def test_front_rejects_a_bad_mode_naming_it():
    with pytest.raises(ValueError, match=r"latency_ms.*'fastest'"):
        pareto_front(ROWS, [(AP, "max"), (MS, "fastest")])


def test_winner_with_and_without_a_constraint():
    assert choose_winner(ROWS, AP, None)["trial"] == 6          # no constraint: best AP, cost unneeded
    assert choose_winner(ROWS, AP, {MS: 30})["trial"] == 1       # best AP under 30 ms (first of the tie)
    assert choose_winner(ROWS, AP, {MS: 10})["trial"] == 0       # ≤ is inclusive
    assert choose_winner(ROWS, AP, {MS: 5}) is None              # the NaN-AP row never wins
    assert choose_winner(ROWS, AP, {MS: 100, "params_M": 1.0}) is None   # a missing key fails the constraint
    lowest = min((r for r in ROWS if valid_number(r.get(AP))), key=lambda r: r[AP])
    assert choose_winner(ROWS, AP, None, mode="min") is lowest   # a metric to minimise


def test_plot_has_points_front_constraint_and_winner():
    front = pareto_front(ROWS, OBJ)
    fig = plot_pareto(ROWS, front, MS, AP, {MS: 30}, "spinenet-proxy")
    ax = fig.axes[0]
    points, star = ax.collections[0], ax.collections[1]
    assert len(points.get_offsets()) == 6                        # the rows with both values finite
    assert tuple(star.get_offsets()[0]) == (20.0, 0.40)          # the winner under 30 ms
    step = [ln for ln in ax.lines if ln.get_label() == "Pareto front"][0]
    assert list(step.get_xdata()) == [10.0, 20.0, 20.0, 40.0]
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_xdata()) == [30, 30]
    assert ax.get_xlabel() == MS and ax.get_ylabel() == AP and ax.get_title() == "spinenet-proxy"
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"trials", "Pareto front", "latency_ms ≤ 30",
                                                                    "winner"}


def test_plot_without_constraint_or_valid_rows_still_draws():
    fig = plot_pareto([_r(0, float("nan"), 1.0)], [], MS, AP, None, "empty")
    ax = fig.axes[0]
    assert len(ax.collections[0].get_offsets()) == 0 and len(ax.collections) == 1 and not ax.lines


def test_front_table_is_csv_sorted_by_the_first_key():
    front = pareto_front(ROWS, OBJ)
    text = front_table(ROWS, front, [MS, AP, "trial"])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [MS, AP, "trial"]
    assert [(float(a), float(b), int(c)) for a, b, c in rows[1:]] == [(10.0, 0.3, 0), (20.0, 0.4, 1),
                                                                       (20.0, 0.4, 4), (40.0, 0.5, 3)]
    assert front_table(ROWS, [], ["trial"]) == "trial\n"
    assert not math.isnan(float(rows[1][1]))

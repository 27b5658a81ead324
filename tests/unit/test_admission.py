"""Admission control's arithmetic: the orders counted undecided plus those accepted since the count."""

import pytest

from services.order.admission import Admission, Overloaded


def test_orders_are_refused_once_the_undecided_ones_reach_the_bound():
    admission = Admission(max_pending=5)
    admission.pending = 3
    admission.admit()
    admission.admit()  # 3 counted + 2 accepted since: at the bound now
    with pytest.raises(Overloaded, match=r"5 orders are still being settled \(at most 5 may be\); retry after 1 s"):
        admission.admit()
    assert admission.refused == 1


def test_a_new_count_opens_the_door_again():
    admission = Admission(max_pending=2)
    admission.admit()
    admission.admit()
    with pytest.raises(Overloaded):
        admission.admit()
    admission.pending, admission.accepted = 0, 0  # what the next count finds once the backlog drained
    admission.admit()


def test_a_bound_of_zero_never_refuses():
    admission = Admission(max_pending=0)
    admission.pending = 10_000
    for _ in range(100):
        admission.admit()
    assert admission.refused == 0

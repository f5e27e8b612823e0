import pytest

from orchestrator.training.schedule import lr_lambda


def test_warmup_rises_linearly_to_peak():
    assert [lr_lambda(s, 4, 20, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("schedule,end", [("cosine", 0.0), ("linear", 0.0), ("constant", 1.0)])
def test_schedules_end_where_expected(schedule, end):
    assert lr_lambda(4, 4, 20, schedule) == pytest.approx(1.0)
    assert lr_lambda(20, 4, 20, schedule) == pytest.approx(end, abs=1e-9)


def test_cosine_is_half_way_at_mid_point():
    assert lr_lambda(12, 4, 20, "cosine") == pytest.approx(0.5)

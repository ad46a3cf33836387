import pytest
import torch

from napari_mousesegment.training.schedule import BudgetSchedule


def _optimizer(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_warms_up_then_anneals_to_the_floor_at_the_step_budget():
    opt = _optimizer()
    schedule = BudgetSchedule(opt, total_steps=100, warmup=0.1, floor=0.02)
    rates = []
    for _ in range(100):
        rates.append(opt.param_groups[0]["lr"])
        schedule.step()
    assert rates[0] <= 0.01 and rates[5] == pytest.approx(0.5) and max(rates) == pytest.approx(1.0, abs=0.01)
    assert rates[10:] == sorted(rates[10:], reverse=True)  # monotone decay after the warm-up
    assert schedule.done and opt.param_groups[0]["lr"] == pytest.approx(0.02)


def test_a_time_budget_anneals_by_the_clock(monkeypatch):
    import napari_mousesegment.training.schedule as mod

    now = [1000.0]
    monkeypatch.setattr(mod.time, "monotonic", lambda: now[0])
    opt = _optimizer()
    schedule = BudgetSchedule(opt, total_seconds=60, warmup=0.0)
    schedule.step()
    now[0] += 30
    schedule.step()
    assert schedule.fraction == pytest.approx(0.5) and opt.param_groups[0]["lr"] == pytest.approx(0.51)
    state = schedule.state_dict()
    resumed = BudgetSchedule(_optimizer(), total_seconds=60, warmup=0.0)
    resumed.load_state_dict(state)  # a resumed run keeps the time already spent
    assert resumed.fraction == pytest.approx(0.5)
    now[0] += 40
    schedule.step()
    assert schedule.done


def test_a_resumed_run_s_minutes_come_on_top_and_its_rate_ends_with_its_clock(monkeypatch):
    import napari_mousesegment.training.schedule as mod
    from napari_mousesegment.training.checkpoint import stop_reason

    now = [0.0]
    monkeypatch.setattr(mod.time, "monotonic", lambda: now[0])
    first = BudgetSchedule(_optimizer(), total_seconds=1800, warmup=0.05)
    first.step()
    now[0] += 1800
    first.step()
    assert first.done  # the first run's 30 minutes end at the floor
    opt = _optimizer()
    resumed = BudgetSchedule(opt, total_seconds=3000, warmup=0.05)  # --resume --max-minutes 50
    resumed.load_state_dict(first.state_dict())
    resumed.run_for(3000)
    assert resumed.total_seconds == pytest.approx(4800) and resumed.fraction == pytest.approx(1800 / 4800)
    assert 0.5 < opt.param_groups[0]["lr"] < 0.9  # back up the longer cosine, not at the floor
    started = now[0]
    resumed.step()
    now[0] += 2990
    resumed.step()
    assert not resumed.done and stop_reason(lambda: False, started, 50) is None  # neither ends early
    now[0] += 11
    resumed.step()
    assert resumed.done and opt.param_groups[0]["lr"] == pytest.approx(0.02)
    assert stop_reason(lambda: False, started, 50) == "--max-minutes 50 reached"  # the same moment


def test_whichever_budget_ends_first():
    schedule = BudgetSchedule(_optimizer(), total_steps=10, total_seconds=3600)
    for _ in range(10):
        schedule.step()
    assert schedule.done


@pytest.mark.parametrize("kw", [{}, {"total_steps": 10, "warmup": 1.0}])
def test_bad_budgets_are_refused(kw):
    with pytest.raises(ValueError):
        BudgetSchedule(_optimizer(), **kw)

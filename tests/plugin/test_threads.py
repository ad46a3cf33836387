"""run_reporting: a callback-style core call as a generator of progress events."""

import threading

import pytest

from napari_mousesegment.plugin.widgets.threads import run_reporting


def _count(n, progress, should_stop):
    for k in range(n):
        if should_stop():
            raise InterruptedError("stopped")
        progress(k + 1, n)
    return n * 10


def _drain(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as done:
            return events, done.value


def test_progress_is_yielded_and_the_result_returned_call_after_call():
    stop = threading.Event()
    for n in (3, 5):  # one stop flag serves several calls in a row (one per organ)
        events, value = _drain(run_reporting(_count, stop, n))
        assert events == [(k + 1, n) for k in range(n)] and value == n * 10
    assert not stop.is_set()


def test_errors_of_the_core_call_reach_the_caller():
    stop = threading.Event()
    stop.set()
    with pytest.raises(InterruptedError, match="stopped"):
        _drain(run_reporting(_count, stop, 3))


def test_closing_the_generator_early_stops_the_core_call():
    stop = threading.Event()
    gen = run_reporting(_count, stop, 10_000_000)
    next(gen)
    gen.close()
    assert stop.is_set()


def test_activity_progress_follows_events_and_starts_a_new_bar_per_total(qtbot):
    from napari_mousesegment.plugin.widgets.threads import ActivityProgress

    activity = ActivityProgress("test")
    activity.update(2, 10)
    first = activity.bar
    activity.update(7, 10)
    assert activity.bar is first and first.n == 7 and first.total == 10
    activity.update(1, 35)  # the next organ
    assert activity.bar is not first and activity.bar.n == 1 and activity.bar.total == 35
    activity.close()
    assert activity.bar is None

import time

from turnout.config import load_config
from turnout.train.watchdog import Watchdog


def test_learned_timeout_and_firing_once():
    h = load_config(None, ["health.hang_factor=5", "health.hang_floor_s=0.2", "health.hang_first_s=30"]).health
    fired = []
    w = Watchdog(h, lambda label, step, elapsed, limit: fired.append((label, step, elapsed, limit)), poll_s=0.02)
    assert w.timeout() == 30  # nothing learned yet
    for _ in range(3):
        w.begin("step", 1)
        w.end()
    assert w.timeout() == 0.2  # median ~0 s x 5 is below the floor
    w.start()
    w.begin("step", 7)
    time.sleep(0.6)
    w.end()
    w.stop()
    assert len(fired) == 1 and fired[0][:2] == ("step", 7) and fired[0][2] > 0.2


def test_quick_steps_never_fire():
    h = load_config(None, ["health.hang_floor_s=0.3"]).health
    fired = []
    w = Watchdog(h, lambda *a: fired.append(a), poll_s=0.01).start()
    for s in range(20):
        w.begin("step", s)
        time.sleep(0.005)
        w.end()
    time.sleep(0.1)
    w.stop()
    assert fired == []


def test_a_fixed_timeout_holds_for_every_section():
    fired = []
    w = Watchdog(0.1, lambda *a: fired.append(a[:2]), poll_s=0.01)
    for _ in range(3):
        w.begin("step", 1)
        w.end()
    assert w.timeout() == w.timeout("the compute") == 0.1  # nothing is learned
    w.start()
    w.begin("the compute", 4)
    time.sleep(0.3)
    w.end()
    w.stop()
    assert fired == [("the compute", 4)]

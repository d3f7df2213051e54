from tools.restart_policy import RestartPolicy


def test_backoff_doubles_to_a_cap_and_restarts_only_when_due():
    p = RestartPolicy(first_delay=1.0, max_delay=8.0, stable_after=60.0)
    p.started("nats", 0.0)
    delays = []
    now = 1.0
    for _ in range(6):
        delay = p.exited("nats", now)
        delays.append(delay)
        assert p.waiting("nats") and not p.due("nats", now + delay - 0.01) and p.due("nats", now + delay)
        now += delay
        p.started("nats", now)
        assert not p.waiting("nats")
        now += 1.0  # crashes again soon after
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_process_that_stayed_up_starts_the_backoff_over():
    p = RestartPolicy(first_delay=1.0, stable_after=60.0)
    p.started("risk", 0.0)
    assert [p.exited("risk", 1.0), p.exited("risk", 2.0)] == [1.0, 2.0]
    p.started("risk", 3.0)
    assert p.exited("risk", 70.0) == 1.0
    assert p.exited("router", 5.0) == 1.0  # names are independent

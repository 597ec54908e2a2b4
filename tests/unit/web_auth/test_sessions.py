"""Admin sessions and the login throttle, with the clock passed in."""

from provisioning.auth import MAX_TOKENS, LoginThrottle, Sessions


def test_tokens_expire_after_their_lifetime():
    now = [0.0]
    sessions = Sessions(ttl=3600.0, clock=lambda: now[0])
    token = sessions.issue()
    assert sessions.valid(token)
    assert not sessions.valid("not-a-token") and not sessions.valid(None)
    now[0] = 3599.0
    assert sessions.valid(token)
    now[0] = 3600.0
    assert not sessions.valid(token)  # gone, and it stays gone
    now[0] = 0.0
    assert not sessions.valid(token)


def test_the_oldest_token_gives_way_when_too_many_are_out():
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0])
    tokens = []
    for _ in range(MAX_TOKENS + 1):
        tokens.append(sessions.issue())
        now[0] += 1.0
    assert not sessions.valid(tokens[0])
    assert all(sessions.valid(t) for t in tokens[1:])
    sessions.revoke_all()
    assert not any(sessions.valid(t) for t in tokens)


def test_failed_logins_double_the_wait_up_to_the_cap_per_address():
    now = [0.0]
    throttle = LoginThrottle(base=1.0, cap=60.0, clock=lambda: now[0])
    waits = [throttle.failed("10.0.0.9") for _ in range(8)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert throttle.retry_after("10.0.0.9") == 60.0
    assert throttle.retry_after("10.0.0.10") == 0.0  # another address is not slowed
    now[0] = 61.0
    assert throttle.retry_after("10.0.0.9") == 0.0
    throttle.succeeded("10.0.0.9")
    assert throttle.failed("10.0.0.9") == 1.0  # a good login resets the count

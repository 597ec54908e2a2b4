"""The DTMF code matcher (SPEC 6 rules), time passed in."""

from porch.codes import CodeMatcher, Outcome


def feed_all(m: CodeMatcher, digits: str, source: str = "rfc4733", start: float = 0.0):
    return [m.feed(d, source, start + i) for i, d in enumerate(digits)]


def test_code_opens_as_soon_as_entry_equals_it():
    m = CodeMatcher(["1234"])
    outcomes = [d.outcome for d in feed_all(m, "1234")]
    assert outcomes == [Outcome.PENDING] * 3 + [Outcome.UNLOCK]


def test_star_clears_the_entry():
    m = CodeMatcher(["1234"])
    outcomes = [d.outcome for d in feed_all(m, "12*1234")]
    assert outcomes[2] is Outcome.CLEARED
    assert outcomes[-1] is Outcome.UNLOCK


def test_hash_counts_one_wrong_code_and_clears():
    m = CodeMatcher(["1234"])
    decisions = feed_all(m, "12#1234")
    assert decisions[2].outcome is Outcome.WRONG and decisions[2].wrong_count == 1
    assert decisions[-1].outcome is Outcome.UNLOCK
    assert m.wrong_count == 0  # a right code resets the count


def test_too_long_entry_is_wrong():
    m = CodeMatcher(["12", "345"])
    decisions = feed_all(m, "9999")
    assert [d.outcome for d in decisions] == [Outcome.PENDING] * 3 + [Outcome.WRONG]


def test_five_wrong_lock_out_for_sixty_seconds_and_digits_are_ignored():
    m = CodeMatcher(["1234"], lockout_attempts=5, lockout_seconds=60)
    outcomes = [m.feed("#", "info", t).outcome for t in range(5)]
    assert outcomes == [Outcome.WRONG] * 4 + [Outcome.LOCKED_OUT]
    assert m.locked_out(10.0)
    ignored = [m.feed(d, "info", 10.0 + i).outcome for i, d in enumerate("1234")]
    assert ignored == [Outcome.IGNORED_LOCKOUT] * 4
    assert not m.locked_out(65.0)
    assert feed_all(m, "1234", start=65.0)[-1].outcome is Outcome.UNLOCK


def test_wrong_count_carries_across_calls_and_sources():
    m = CodeMatcher(["1234"])
    m.feed("#", "info", 0)
    m.clear()  # a new call
    m.feed("#", "rfc4733", 1)
    m.feed("#", "inband", 2)
    assert m.wrong_count == 3


def test_same_digit_by_two_methods_at_once_counts_once():
    m = CodeMatcher(["11"])
    assert m.feed("1", "rfc4733", 0.0).outcome is Outcome.PENDING
    assert m.feed("1", "info", 0.1).outcome is Outcome.DUPLICATE
    # the second key press from the same method is a real digit
    assert m.feed("1", "rfc4733", 0.5).outcome is Outcome.UNLOCK


def test_no_codes_means_digits_do_nothing():
    m = CodeMatcher([])
    assert all(d.outcome is Outcome.NO_CODES for d in feed_all(m, "12#"))
    assert m.wrong_count == 0


def test_garbage_is_invalid_not_an_error():
    assert CodeMatcher(["1"]).feed("x", "info", 0).outcome is Outcome.INVALID

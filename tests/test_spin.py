"""The busy poll's back-off (runtime/edge/spin.py): pure, no sockets."""
from runtime.edge.spin import MAX_BACKOFF, SpinPolicy


def spins_in(policy, requests, hit, wall_s, cpu_s):
    count = 0
    for _ in range(requests):
        if policy.should_spin():
            count += 1
            policy.record(hit, wall_s, cpu_s)
    return count


def test_spins_that_catch_their_reply_on_a_core_of_their_own_go_on():
    policy = SpinPolicy()
    assert spins_in(policy, 100, True, 0.001, 0.001) == 100 and policy.missed == policy.starved == 0


def test_missed_spins_back_off_doubling_up_to_the_cap_and_one_that_pays_resumes_spinning():
    policy = SpinPolicy()
    assert spins_in(policy, 1000, False, 0.002, 0.002) <= 1000 // MAX_BACKOFF + 8  # replies come after the spin
    assert policy.backoff == MAX_BACKOFF and policy.missed == policy.spins
    skipped = 0
    while not policy.should_spin():  # the machine is quiet again: the next try catches its reply ...
        skipped += 1
    assert skipped < MAX_BACKOFF
    policy.record(True, 0.0005, 0.0005)
    assert policy.backoff == 0 and spins_in(policy, 50, True, 0.001, 0.001) == 50  # ... and spinning resumes


def test_a_spin_starved_of_cpu_did_not_pay_even_when_it_caught_the_reply():
    policy = SpinPolicy()
    assert spins_in(policy, 1000, True, 0.002, 0.0005) <= 1000 // MAX_BACKOFF + 8  # a quarter of a core
    assert policy.starved == policy.spins and policy.missed == 0


def test_an_occasional_late_reply_costs_one_request_of_spinning():
    policy = SpinPolicy()
    spun = 0
    for i in range(100):
        if policy.should_spin():
            spun += 1
            policy.record(i % 10 != 0, 0.001, 0.001)  # one reply in ten comes after the spin
    assert spun >= 90


def test_a_reply_that_is_there_at_once_says_nothing():
    policy = SpinPolicy()
    assert spins_in(policy, 100, True, 0.00005, 0.0) == 100 and policy.spins == 0

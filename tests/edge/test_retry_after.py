"""The wait a refusal states, run in the admission script itself against the test Redis at chosen
instants: the script is called with a clock of the test's choosing (``admit(now_ms)``, which ADMIT
calls with Redis's TIME), on windows seeded as a minute of traffic would have left them."""

import math

import pytest
import redis as redis_lib

from edge.limits import ADMIT_AT, MAX_COUNT, NEVER, Refusal, refusal_error
from tests.edge.sliding import exact_wait_ms, wait_ms

ORG_ID = 7
RL = f"tg:rl:{{o:{ORG_ID}}}:k:key_retry"
CONC = f"tg:conc:{{o:{ORG_ID}}}:k:key_retry"
BUDGET = f"tg:budget:{{o:{ORG_ID}}}:k:key_retry"
ORG_RL = f"tg:rl:{{o:{ORG_ID}}}:org"
ORG_CONC = f"tg:conc:{{o:{ORG_ID}}}:org"
ORG_BUDGET = f"tg:budget:{{o:{ORG_ID}}}:org"
WINDOW = 29_000_000  # a minute in 2025; any will do
OFFSETS = [0, 1, 999, 1_000, 7_500, 15_000, 29_999, 30_000, 30_001, 44_321, 54_000, 59_000, 59_998, 59_999]


@pytest.fixture
def redis(settings):
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def admit_at(redis):
    """Return ``admit(now_ms, ...)``: the script's answer at ``now_ms`` for the key's limits (and
    the organization's, ``org``: [rpm, tpm, concurrency, cap]), on rate hashes holding exactly
    ``seed`` (and ``org_seed``), and ``leases`` requests in flight on the key."""
    script = redis.register_script(ADMIT_AT + "return admit(tonumber(ARGV[#ARGV]))")

    def admit(
        now_ms: int,
        *,
        rpm=-1,
        tpm=-1,
        conc=-1,
        cap=-1,
        est=0,
        cost=0,
        seed=None,
        org=None,
        org_seed=None,
        leases=0,
    ):
        redis.delete(RL, CONC, BUDGET, ORG_RL, ORG_CONC, ORG_BUDGET)
        if seed:
            redis.hset(RL, mapping=seed)
        if org_seed:
            redis.hset(ORG_RL, mapping=org_seed)
        for lease in range(leases):
            redis.zadd(CONC, {f"held-{lease}": now_ms + 60_000})
        keys = [RL, CONC, BUDGET]
        limits = [rpm, tpm, conc, cap]
        if org is not None:
            keys += [ORG_RL, ORG_CONC, ORG_BUDGET]
            limits += org
        return script(keys=keys, args=[len(keys) // 3, est, cost, "lease", 60_000, *limits, now_ms])

    return admit


def seed(kind: str, cur: int, prev: int) -> dict:
    field = "r" if kind == "requests" else "t"
    return {f"{field}:{WINDOW}": cur, f"{field}:{WINDOW - 1}": prev}


# (kind, limit, amount, count in this window, count in the previous one)
STATES = [
    ("requests", 2, 1, 2, 0),  # the issue: two requests this minute, the third refused
    ("requests", 2, 1, 0, 2),  # two last minute: room again half-way through this one
    ("requests", 2, 1, 1, 1),  # room exactly when this window ends
    ("requests", 2, 1, 0, 7),
    ("requests", 2, 1, 2, 9),  # this window full: the previous one no longer matters
    ("requests", 10, 1, 10, 10),
    ("requests", 600, 1, 13, 997),
    ("tokens", 1_000, 305, 915, 0),
    ("tokens", 1_000, 305, 0, 1_000),
    ("tokens", 1_000, 305, 400, 700),
    ("tokens", 1_000, 305, 695, 1),
    ("tokens", 1_000, 1_000, 1, 0),  # the whole limit at once: only once nothing is counted
    ("tokens", 1_000, 0, 1_001, 5),  # settled above the limit: even nothing waits
    ("tokens", 150_000_000, 4_096, 149_990_000, 150_000_000),
    ("tokens", 10**12, 10**12, 10**12, 10**12),
    ("tokens", 10**12, 1, 0, MAX_COUNT),
]


@pytest.mark.parametrize(("kind", "limit", "amount", "cur", "prev"), STATES)
def test_a_client_that_waits_the_stated_time_is_admitted_and_one_a_millisecond_earlier_is_not(
    admit_at, kind, limit, amount, cur, prev
):
    limits = {"rpm": limit} if kind == "requests" else {"tpm": limit, "est": amount}
    for offset in OFFSETS:
        now = WINDOW * 60_000 + offset
        refused = admit_at(now, seed=seed(kind, cur, prev), **limits)
        if refused[0] == 1:  # this state fits at this offset; a later one refuses
            continue
        assert refused[2:5] == [kind.encode(), refused[3], limit]
        wait = refused[3]
        assert wait == wait_ms(cur, prev, offset, amount, limit)
        # Never early, and 1 ms to spare (2 where float rounding lands on the exact boundary).
        exact = exact_wait_ms(cur, prev, offset, amount, limit)
        assert exact + 1 <= wait <= exact + 2, (offset, wait, exact)
        # Waiting the stated time is enough, and the stated time less 2 ms is not.
        assert admit_at(now + wait, seed=seed(kind, cur, prev), **limits)[0] == 1, offset
        assert admit_at(now + wait - 2, seed=seed(kind, cur, prev), **limits)[0] == 0, offset
        # So is Retry-After, in whole seconds; a second less is too little (unless the wait is a
        # whole number of seconds and the 1 ms to spare).
        retry_after = math.ceil(wait / 1000)
        assert admit_at(now + retry_after * 1000, seed=seed(kind, cur, prev), **limits)[0] == 1
        if (retry_after - 1) * 1000 < wait - 1:
            assert admit_at(now + (retry_after - 1) * 1000, seed=seed(kind, cur, prev), **limits)[0] == 0


def test_the_issue_two_requests_early_in_a_minute_mean_a_wait_into_the_next(admit_at):
    """rpm 2, two requests served, the third refused 54 s into the minute: not 6 s (the next minute
    still counts the two at full weight) but 36 s, when they weigh 1 between them."""
    refused = admit_at(WINDOW * 60_000 + 54_000, rpm=2, seed={f"r:{WINDOW}": 2})
    assert refused == [0, 0, b"requests", 36_001, 2, 0, 1]
    assert admit_at((WINDOW + 1) * 60_000 + 29_999, rpm=2, seed={f"r:{WINDOW}": 2})[0] == 0
    assert admit_at((WINDOW + 1) * 60_000 + 30_000, rpm=2, seed={f"r:{WINDOW}": 2})[0] == 1


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"rpm": 0}, [0, 0, b"requests", NEVER, 0, 0, 1]),
        ({"tpm": 1_000, "est": 1_001}, [0, 0, b"tokens", NEVER, 1_000, 1_000, 1_001]),
        ({"tpm": 0, "est": 1}, [0, 0, b"tokens", NEVER, 0, 0, 1]),
    ],
)
def test_a_request_larger_than_the_limit_is_told_no_wait_will_do(admit_at, limits, expected):
    for offset in (0, 30_000, 59_999):
        assert admit_at(WINDOW * 60_000 + offset, **limits) == expected


def test_the_wait_is_the_longest_any_broken_rate_limit_needs_under_the_first_one_broken(admit_at):
    now = WINDOW * 60_000 + 10_000
    # The key's rpm frees up at 30 s, the organization's tpm only at 45 s into the next minute.
    key = seed("requests", 0, 2)
    org_tpm = [-1, 1_000, -1, -1]
    refused = admit_at(now, rpm=2, est=250, seed=key, org=org_tpm)
    assert refused == [0, 0, b"requests", 20_001, 2, 0, 1]  # the org has counted nothing yet
    # Now the organization has 1000 tokens this minute: the wait covers them too.
    refused = admit_at(now, rpm=2, est=250, seed=key, org=org_tpm, org_seed={f"t:{WINDOW}": 1_000})
    assert refused[:3] == [0, 0, b"requests"]
    assert refused[3] == wait_ms(1_000, 0, 10_000, 250, 1_000) == 50_000 + 15_000 + 1
    # A request too large for one scope says so, whatever else refuses it.
    refused = admit_at(now, rpm=2, est=1_001, seed=key, org=org_tpm)
    assert refused == [0, 1, b"tokens", NEVER, 1_000, 1_000, 1_001]


def refusal(kind: str, reset_ms: int, *, limit=2, remaining=0, requested=1, scope="key") -> Refusal:
    return Refusal(
        scope=scope, kind=kind, reset_ms=reset_ms, limit=limit, remaining=remaining, requested=requested
    )


@pytest.mark.parametrize(
    ("reset_ms", "retry_after"),
    [(1, "1"), (999, "1"), (1_000, "1"), (1_001, "2"), (36_001, "37"), (119_999, "120")],
)
def test_retry_after_is_the_wait_rounded_up_to_a_whole_second(reset_ms, retry_after):
    error = refusal_error(refusal("requests", reset_ms))

    assert error.status == 429
    assert error.headers == [
        (b"retry-after", retry_after.encode()),
        (b"x-ratelimit-limit-requests", b"2"),
        (b"x-ratelimit-remaining-requests", b"0"),
        (b"x-ratelimit-reset-requests", f"{retry_after}s".encode()),
    ]
    assert error.body() == (
        b'{"error":{"message":"Rate limit reached for this API key: 2 requests per minute. '
        b"Retry after "
        + retry_after.encode()
        + b's.","type":"requests","param":null,"code":"rate_limit_exceeded"}}'
    )


def test_a_tokens_refusal_names_the_organization_when_it_is_the_organization_s_limit():
    error = refusal_error(
        refusal("tokens", 16_553, limit=100, remaining=42, requested=58, scope="organization")
    )

    assert (
        error.message == "Rate limit reached for this organization: 100 tokens per minute. Retry after 17s."
    )
    assert (error.type, error.code, error.param) == ("tokens", "rate_limit_exceeded", None)
    assert error.headers == [
        (b"retry-after", b"17"),
        (b"x-ratelimit-limit-tokens", b"100"),
        (b"x-ratelimit-remaining-tokens", b"42"),
        (b"x-ratelimit-reset-tokens", b"17s"),
    ]


def test_a_request_larger_than_the_tokens_limit_gets_no_retry_after_and_should_not_be_retried():
    error = refusal_error(refusal("tokens", NEVER, limit=100, remaining=100, requested=1_009))

    assert error.status == 429
    assert error.message == (
        "Request too large for this API key on tokens per min (TPM): Limit 100, Requested 1009. "
        "The input or output tokens must be reduced in order to run successfully: the edge counts "
        "the prompt and max_tokens for each of n choices."
    )
    assert (error.type, error.code, error.param) == ("tokens", "rate_limit_exceeded", None)
    assert error.headers == [
        (b"x-ratelimit-limit-tokens", b"100"),
        (b"x-ratelimit-remaining-tokens", b"100"),
        (b"x-should-retry", b"false"),
    ]


def test_a_key_allowed_no_requests_is_told_so_with_no_retry_after():
    error = refusal_error(refusal("requests", NEVER, limit=0, scope="organization"))

    assert error.status == 429
    assert error.message == (
        "This organization allows 0 requests per minute: no request can be served. "
        "Raise the limit in the Tollgate console."
    )
    assert error.headers == [
        (b"x-ratelimit-limit-requests", b"0"),
        (b"x-ratelimit-remaining-requests", b"0"),
        (b"x-should-retry", b"false"),
    ]


def test_concurrency_and_budget_refusals_keep_their_messages():
    busy = refusal_error(refusal("concurrency", 1_000, limit=3))
    assert busy.message == "Too many concurrent requests for this API key (limit 3). Retry shortly."
    assert (busy.type, busy.code, busy.headers) == (
        "requests",
        "rate_limit_exceeded",
        [(b"retry-after", b"1")],
    )

    spent = refusal_error(refusal("budget", 0, limit=4500, remaining=12, requested=30))
    assert spent.message == (
        "This request would exceed the API key's monthly budget of 45.00: the edge reserves a request's "
        "worst-case cost (prompt and max_tokens) until it ends. Lower max_tokens, raise the budget in the "
        "Tollgate console, or wait for the next month."
    )
    assert (spent.type, spent.code, spent.headers) == ("insufficient_quota", "insufficient_quota", [])


def test_admitted_requests_state_when_their_scope_has_fully_replenished(admit_at):
    """OpenAI's x-ratelimit-reset-*: the time until remaining is back at the limit. A window's count
    weighs fully until it ends and then decays over the next, so that is the end of the next window."""
    now = WINDOW * 60_000 + 15_000
    admitted = admit_at(now, rpm=10, tpm=1_000, est=100, seed={f"r:{WINDOW - 1}": 3, f"t:{WINDOW - 1}": 300})
    # remaining requests floor(10 - 3 * 0.75 - 1), tokens floor(1000 - 300 * 0.75 - 100), resets.
    assert admitted[3:] == [6, 675, 105_000, 105_000]
    # Nothing counted now (no tokens estimated) and only the previous window: it decays out by the
    # end of this one.
    admitted = admit_at(now, tpm=1_000, est=0, seed={f"t:{WINDOW - 1}": 300})
    assert admitted[3:] == [-1, 775, 105_000, 45_000]
    admitted = admit_at(now, tpm=1_000, est=0)
    assert admitted[3:] == [-1, 1_000, 105_000, 0]


def test_a_concurrency_refusal_waits_a_second_or_what_a_broken_rate_limit_needs(admit_at):
    now = WINDOW * 60_000 + 10_000
    assert admit_at(now, conc=1, leases=1) == [0, 0, b"concurrency", 1_000, 1, 0, 1]
    # The tokens limit is broken too (it would refuse the request once the lease is gone) and
    # needs 20 s: retrying after 1 s would be refused again.
    refused = admit_at(now, tpm=1_000, conc=1, est=500, leases=1, seed=seed("tokens", 0, 1_000))
    assert refused == [0, 0, b"tokens", 20_001, 1_000, 166, 500]
    refused = admit_at(
        now, rpm=5, conc=1, est=500, leases=1, org=[-1, 1_000, -1, -1], org_seed=seed("tokens", 0, 1_000)
    )
    assert refused == [0, 0, b"concurrency", 20_001, 1, 0, 1]

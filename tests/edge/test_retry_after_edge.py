"""Retry-After through a real edge process: a client that waits what the 429 says is admitted; one
that comes back a second sooner is refused.

Minutes are real here, so the tests do not wait one out: they seed the key's rate hash with the
traffic of the minute before (or of this one) so that the request fits again about 2.7 s after
it is sent, and send it at the instant, on Redis's clock, that makes that so. Where in the minute
that falls depends on when the test runs; tests/edge/test_retry_after.py runs the same script at
every offset with a chosen clock.
"""

import math

import httpx
import pytest

from tests.edge.sliding import WINDOW, earliest, redis_ms, retry_afters, sleep_until

pytestmark = pytest.mark.django_db

HELLO = [{"role": "user", "content": "hello there"}]
PROMPT_ESTIMATE = len(b"hello there") // 3 + 5  # the edge's estimate: bytes // 3 + 4 per message + 1
# What each refusal below should state, give or take the request's own latency. Its fraction of
# a second is the time the client has to come back a second early and still be refused.
WAIT_MS = 2_700
LEAD_MS = 150  # time to seed and send before the chosen instant


@pytest.fixture(scope="module")
def retry_edge(start_module_edge, mock_upstream):
    return start_module_edge([{"model": "*", "upstreams": [mock_upstream.url]}])


@pytest.fixture
def post(retry_edge):
    """POST a chat completion on one kept-alive connection (no connect time in the timings)."""
    with httpx.Client(base_url=retry_edge.url, timeout=10) as client:

        def send(secret: str, **extra) -> httpx.Response:
            body = {"model": "mock-model", "messages": HELLO, **extra}
            return client.post(
                "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"}
            )

        yield send


def rate_limit_body(unit: str, limit: int, retry_after: str) -> dict:
    return {
        "error": {
            "message": f"Rate limit reached for this API key: {limit} {unit} per minute. Retry after {retry_after}s.",
            "type": unit,
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


def refuse_then_retry(client, post, secret, *, fits_at: int, state: tuple, unit: str, **body):
    """Send WAIT_MS before the request fits (``fits_at``, Redis ms), expect a 429 stating that wait,
    then retry a second before it says (refused) and when it says (admitted)."""
    cur, prev, amount, limit = state
    sleep_until(client, fits_at + 1 - WAIT_MS)
    before = redis_ms(client)
    refused = post(secret, **body)
    received = redis_ms(client)

    assert refused.status_code == 429
    retry_after = refused.headers["retry-after"]
    assert retry_after in retry_afters(cur, prev, amount, limit, before, received)
    assert refused.json() == rate_limit_body(unit, limit, retry_after)
    assert refused.headers[f"x-ratelimit-reset-{unit}"] == f"{retry_after}s"

    sleep_until(client, received + (int(retry_after) - 1) * 1000)
    early = post(secret, **body)
    answered = redis_ms(client)
    assert answered < fits_at, f"the machine is too slow for this test: answered {answered - fits_at} ms late"
    assert early.status_code == 429, early.text
    assert early.headers["retry-after"] == "1"

    sleep_until(client, received + int(retry_after) * 1000)
    on_time = post(secret, **body)
    assert on_time.status_code == 200, on_time.text
    return on_time


def test_a_tokens_refusal_states_the_wait_after_which_the_request_is_admitted(make_key, post, redis_client):
    key, secret = make_key(tpm_limit=1_000)
    rate = f"tg:rl:{{o:{key.organization_id}}}:k:{key.public_id}"
    amount = 100 + PROMPT_ESTIMATE  # max_tokens 100
    limit = 1_000
    now = redis_ms(redis_client)
    if now % WINDOW > WINDOW - 400:  # no room for either plan below: take the next minute
        sleep_until(redis_client, (now // WINDOW + 1) * WINDOW)
        now = redis_ms(redis_client)
    window, elapsed = divmod(now, WINDOW)
    if elapsed + LEAD_MS + WAIT_MS < WINDOW - 200:
        # Early or mid-minute: last minute's tokens decay until this request fits, WAIT_MS from
        # the instant it is sent.
        target = elapsed + LEAD_MS + WAIT_MS
        prev = math.ceil((limit - amount) / (1 - target / WINDOW))
        state = (0, prev, amount, limit)
        fits_at = earliest(0, prev, amount, limit)
        redis_client.hset(rate, f"t:{window - 1}", prev)
    else:
        # The last seconds: this minute's tokens leave no room, so the wait runs into the next
        # minute, where they decay in turn.
        target = max(elapsed + LEAD_MS + WAIT_MS - WINDOW, 200)
        cur = math.ceil((limit - amount) / (1 - target / WINDOW))
        assert cur + amount > limit
        state = (cur, 0, amount, limit)
        fits_at = WINDOW + earliest(0, cur, amount, limit)
        redis_client.hset(rate, f"t:{window}", cur)

    served = refuse_then_retry(
        redis_client,
        post,
        secret,
        fits_at=window * WINDOW + fits_at,
        state=state,
        unit="tokens",
        max_tokens=100,
    )
    assert served.headers["x-ratelimit-limit-tokens"] == "1000"


def test_a_two_requests_per_minute_refusal_states_the_wait_after_which_the_request_is_admitted(
    make_key, post, redis_client
):
    """The issue's key. Its waits come in coarse steps (the previous minute's p requests leave
    room at 60 s * (1 - 1/p): 30 s, 40 s, 45 s, ...), so the test sends at whichever comes next,
    waiting up to half a minute when it starts early in one."""
    key, secret = make_key(rpm_limit=2)
    rate = f"tg:rl:{{o:{key.organization_id}}}:k:{key.public_id}"
    while True:
        now = redis_ms(redis_client)
        window, elapsed = divmod(now, WINDOW)
        prev = next(
            (p for p in range(2, 1_000) if earliest(0, p, 1, 2) + 1 - WAIT_MS >= elapsed + LEAD_MS), None
        )
        if prev is not None:
            break
        sleep_until(redis_client, (window + 1) * WINDOW)
    redis_client.hset(rate, f"r:{window - 1}", prev)

    served = refuse_then_retry(
        redis_client,
        post,
        secret,
        fits_at=window * WINDOW + earliest(0, prev, 1, 2),
        state=(0, prev, 1, 2),
        unit="requests",
    )
    assert served.headers["x-ratelimit-limit-requests"] == "2"
    assert served.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_request_larger_than_the_tokens_limit_is_told_no_wait_will_do(make_key, post, redis_client):
    """OpenAI's "Request too large": no Retry-After (no wait would help) and x-should-retry: false.
    (A limit of 0 requests, the other such case, cannot be set through the portal; the script
    and refusal_error are tested for it in tests/edge/test_retry_after.py.)"""
    key, secret = make_key(tpm_limit=100)

    refused = post(secret, max_tokens=1_000)

    assert refused.status_code == 429
    assert refused.json() == {
        "error": {
            "message": "Request too large for this API key on tokens per min (TPM): Limit 100, "
            f"Requested {1_000 + PROMPT_ESTIMATE}. The input or output tokens must be reduced in order "
            "to run successfully: the edge counts the prompt and max_tokens for each of n choices.",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert "retry-after" not in refused.headers
    assert "x-ratelimit-reset-tokens" not in refused.headers
    assert refused.headers["x-should-retry"] == "false"
    assert refused.headers["x-ratelimit-limit-tokens"] == "100"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "100"
    assert redis_client.exists(f"tg:rl:{{o:{key.organization_id}}}:k:{key.public_id}") == 0

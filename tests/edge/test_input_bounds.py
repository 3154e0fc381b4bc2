"""Numbers a request sends that size its admission: refused as OpenAI refuses them, before any
counter or lease moves, so the limits hold exactly as before the bad request."""

import httpx
import pytest

pytestmark = pytest.mark.django_db

HELLO = [{"role": "user", "content": "hello there"}]
# The edge's prompt estimate for HELLO: prompt bytes // 3 + 4 per message + 1.
PROMPT_ESTIMATE = len(b"hello there") // 3 + 5


@pytest.fixture(scope="module")
def bounds_edge(start_module_edge, mock_upstream):
    return start_module_edge([{"model": "*", "upstreams": [mock_upstream.url]}])


@pytest.fixture
def post(bounds_edge):
    def send(secret: str, **extra) -> httpx.Response:
        body = {"model": "mock-model", "messages": HELLO, **extra}
        return httpx.post(
            f"{bounds_edge.url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {secret}"},
            timeout=10,
        )

    return send


def invalid(message: str, *, param: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def type_error(param: str, kind: str) -> dict:
    return invalid(
        f"Invalid type for '{param}': expected an integer, but got {kind} instead.",
        param=param,
        code="invalid_type",
    )


def below(param: str, value: int) -> dict:
    return invalid(
        f"Invalid '{param}': integer below minimum value. Expected a value >= 1, but got {value} instead.",
        param=param,
        code="integer_below_min_value",
    )


def above(param: str, maximum: int, value: int) -> dict:
    return invalid(
        f"Invalid '{param}': integer above maximum value. Expected a value <= {maximum}, but got {value} instead.",
        param=param,
        code="integer_above_max_value",
    )


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_tokens", 10**18, above("max_tokens", 10_000_000, 10**18)),
        ("max_tokens", 10_000_001, above("max_tokens", 10_000_000, 10_000_001)),
        ("max_tokens", -1, below("max_tokens", -1)),
        ("max_tokens", 0, below("max_tokens", 0)),
        ("max_tokens", "100", type_error("max_tokens", "a string")),
        ("max_tokens", 1.5, type_error("max_tokens", "a decimal number")),
        ("max_tokens", True, type_error("max_tokens", "a boolean")),
        ("max_tokens", [100], type_error("max_tokens", "an array")),
        ("max_completion_tokens", 10**18, above("max_completion_tokens", 10_000_000, 10**18)),
        ("max_completion_tokens", 0, below("max_completion_tokens", 0)),
        ("max_completion_tokens", {"n": 1}, type_error("max_completion_tokens", "an object")),
        ("n", 0, below("n", 0)),
        ("n", 129, above("n", 128, 129)),
        ("n", "2", type_error("n", "a string")),
    ],
)
def test_out_of_bounds_numbers_are_400_and_leave_no_lease_or_count(
    make_key, post, redis_client, mock_upstream, field, value, expected
):
    key, secret = make_key(concurrency_limit=1, tpm_limit=1000, rpm_limit=5)
    scope = f"{{o:{key.organization_id}}}"
    mock_upstream.reset()

    refused = post(secret, **{field: value})

    assert refused.status_code == 400
    assert refused.json() == expected
    assert refused.headers["content-type"] == "application/json"
    assert "retry-after" not in refused.headers
    # Refused before admission: no lease, no request or token counted, nothing sent upstream.
    assert redis_client.zcard(f"tg:conc:{scope}:k:{key.public_id}") == 0
    assert redis_client.exists(f"tg:rl:{scope}:k:{key.public_id}", f"tg:rl:{scope}:org") == 0
    assert mock_upstream.stats()["requests"] == 0
    # The limits hold as before: with concurrency 1, the next valid request is admitted and
    # counted alone.
    served = post(secret, max_tokens=10)
    assert served.status_code == 200
    assert served.headers["x-ratelimit-remaining-requests"] == "4"
    assert served.headers["x-ratelimit-remaining-tokens"] == str(1000 - 10 - PROMPT_ESTIMATE)


def test_a_valid_max_tokens_does_not_excuse_an_invalid_max_completion_tokens(make_key, post):
    _, secret = make_key()

    refused = post(secret, max_tokens=10, max_completion_tokens="10")

    assert refused.status_code == 400
    assert refused.json() == type_error("max_completion_tokens", "a string")


def test_null_means_the_default(make_key, post):
    _, secret = make_key(tpm_limit=100_000)

    served = post(secret, max_tokens=None, max_completion_tokens=None, n=None)

    assert served.status_code == 200
    # default_max_tokens (4096) for one choice.
    assert served.headers["x-ratelimit-remaining-tokens"] == str(100_000 - 4096 - PROMPT_ESTIMATE)


@pytest.mark.parametrize(
    ("fields", "output"),
    [
        ({"max_tokens": 100}, 100),
        ({"max_tokens": 100, "n": 3}, 300),
        ({"max_tokens": 7, "max_completion_tokens": 100}, 100),  # max_completion_tokens wins
        ({"max_completion_tokens": 100, "n": 2}, 200),
        ({"n": 2}, 2 * 4096),
        ({"max_tokens": 10_000_000}, 10_000_000),  # the bound itself is allowed
    ],
)
def test_the_estimate_counts_max_tokens_for_each_of_the_n_choices(make_key, post, fields, output):
    _, secret = make_key(tpm_limit=100_000_000)

    served = post(secret, **fields)

    assert served.status_code == 200
    assert served.headers["x-ratelimit-remaining-tokens"] == str(100_000_000 - output - PROMPT_ESTIMATE)

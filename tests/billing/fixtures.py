"""Billing fixtures, for every test folder: a localstripe of the session's own (completed by localstripe_ext.py), the
settings that point the Stripe adapter at it, and a client to look at what Stripe holds."""

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import stripe

from billing import stripe_adapter
from billing.closing import invoice_build
from billing.services import model_price_set
from keys import services as key_services
from portal.audit import Actor
from tests.factories import make_org, make_user
from tests.servers import _reap, free_port, wait_for
from usage.models import UsageRollup

EXTENSION = Path(__file__).with_name("localstripe_ext.py")
SECRET_KEY = "sk_test_tollgate"


def _answers(url: str) -> bool:
    request = urllib.request.Request(
        f"{url}/v1/customers?limit=1", headers={"Authorization": f"Bearer {SECRET_KEY}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory) -> str:
    """Start localstripe on a free port for the session; return its address."""
    port = free_port()
    log = tmp_path_factory.mktemp("localstripe") / "localstripe.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, str(EXTENSION), "--port", str(port)], stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: _answers(url),
            what=f"localstripe on port {port} (log: {log})",
            timeout=30,
            process=process,
        )
        yield url
    finally:
        _reap(process, signal.SIGTERM, 10)


@pytest.fixture
def stripe_settings(localstripe, settings):
    """Point the Stripe adapter at the session's localstripe."""
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_API_BASE = localstripe
    return settings


@pytest.fixture
def stripe_api(localstripe) -> stripe.StripeClient:
    """A client of the session's localstripe, to look at (and tamper with) what it holds."""
    return stripe.StripeClient(SECRET_KEY, base_addresses={"api": localstripe})


@pytest.fixture
def forget_idempotency_keys(localstripe):
    """Return a function that makes localstripe forget every key, as Stripe does after 24 hours."""

    def forget():
        request = urllib.request.Request(f"{localstripe}/_config/idempotency_keys", method="DELETE")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    return forget


NOV = date(2026, 11, 1)


def _rollup(organization, key, model, hour, input_=0, cached=0, output=0):
    UsageRollup.unscoped.create(
        organization=organization,
        key=key,
        model=model,
        hour=hour,
        billed_period=NOV,
        requests=1,
        input_tokens=input_,
        cached_tokens=cached,
        output_tokens=output,
    )


@pytest.fixture
def billed_month(db):
    """An organization with a month of usage of two priced models, and November 2026's invoice.

    The lines: m input 2,000,000 (200), m cached input 500,000 (25), m output 1,000,000 (300),
    n input 1,234,567 (123.4567 → 123); total 648 cents.
    """
    owner = make_user()
    organization = make_org(owner)
    key, _secret = key_services.api_key_create(actor=Actor(user=owner), organization=organization, name="k")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    model_price_set(
        actor=Actor.system(),
        model="m",
        input_per_mtok_minor="100",
        output_per_mtok_minor="300",
        cached_input_per_mtok_minor="50",
        effective_from=start,
    )
    model_price_set(
        actor=Actor.system(),
        model="n",
        input_per_mtok_minor="100",
        output_per_mtok_minor="0",
        effective_from=start,
    )
    _rollup(organization, key, "m", datetime(2026, 11, 3, 10, tzinfo=UTC), input_=2_000_000, cached=500_000)
    _rollup(organization, key, "m", datetime(2026, 11, 20, 7, tzinfo=UTC), input_=500_000, output=1_000_000)
    _rollup(organization, key, "n", datetime(2026, 11, 30, 23, tzinfo=UTC), input_=1_234_567)
    invoice = invoice_build(organization_id=organization.pk, period=NOV)
    return organization, owner, invoice


@pytest.fixture
def stripe_customer(stripe_settings, stripe_api):
    """Return a function giving an organization its Stripe customer with a default card.

    The customer is created exactly as the push creates it (same parameters, same idempotency
    key), so the push finds it; no Customer row is stored, the push stores it.
    """

    def make(organization, owner, card="pm_card_visa") -> str:
        customer = stripe_adapter.customer_create(
            organization_id=organization.pk, slug=organization.slug, name=organization.name, email=owner.email
        )
        method = stripe_api.v1.payment_methods.attach(card, params={"customer": customer})
        stripe_api.v1.customers.update(
            customer, params={"invoice_settings": {"default_payment_method": method.id}}
        )
        return customer

    return make

"""Fixtures shared by the portal tests."""

import pytest
from oidc_provider_mock import run_server_in_thread


@pytest.fixture(scope="session")
def oidc_server_url():
    """Run a real OpenID Connect provider on a free port; return its base URL.

    Clients must register (RFC 7591) before they can authorize, as with a real provider.
    """
    with run_server_in_thread(port=0, require_client_registration=True) as server:
        yield f"http://localhost:{server.server_port}"

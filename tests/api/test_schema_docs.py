"""The OpenAPI document and its Swagger UI page, served without a CDN."""

import re

import pytest
import yaml

from tests.api.support import openapi_schema, session_client

pytestmark = pytest.mark.django_db


def test_schema_is_served_without_authentication():
    response = session_client().get("/api/schema/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    document = yaml.safe_load(response.content)
    assert document["info"]["title"] == "Tollgate API"
    assert set(document["paths"]) == set(openapi_schema()["paths"])
    assert document["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"]["tokenUrl"] == (
        "/identity/o/api/token"
    )


def test_schema_as_json():
    response = session_client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    assert set(response.json()["paths"]) == set(openapi_schema()["paths"])


def test_docs_load_swagger_ui_from_vendored_static_files():
    client = session_client()
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    for host in ("cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com"):
        assert host not in page
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in assets
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css" in assets
    assert all(not asset.startswith(("http:", "https:", "//")) for asset in assets), assets
    # The start-up script is a file too (the Content-Security-Policy refuses inline script).
    assert "/api/docs/?script=" in assets
    assert '"/api/schema/"' in client.get("/api/docs/?script=").content.decode()
    for asset in assets:
        fetched = client.get(asset)
        assert fetched.status_code == 200, asset
        body = b"".join(fetched.streaming_content) if fetched.streaming else fetched.content
        # The vendored Swagger UI files are whole; the page's own stylesheet is a few rules.
        assert len(body) > (500 if "sidecar" in asset else 100), asset

"""The management REST API's shared machinery: auth, tenancy, RBAC, errors, idempotency."""

"""Tenant-scoped querysets that fail closed.

``Model.objects`` on a tenant model refuses to run a query until it is scoped with
``for_organization(org)``. The escape hatch for support tooling and jobs that span tenants
is ``all_tenants()``; Django internals (admin, relations, forms) use the plain
``unscoped`` manager declared as ``default_manager_name``.
"""

from django.db import models


class TenantScopeError(RuntimeError):
    """A tenant queryset was evaluated without an organization."""


class TenantQuerySet(models.QuerySet):
    _tenant_scoped = False

    def for_organization(self, organization) -> "TenantQuerySet":
        if organization is None or getattr(organization, "pk", organization) is None:
            raise TenantScopeError("for_organization() needs an organization")
        clone = self.filter(organization=organization)
        clone._tenant_scoped = True
        return clone

    def all_tenants(self) -> "TenantQuerySet":
        clone = self._chain()
        clone._tenant_scoped = True
        return clone

    def _clone(self):
        clone = super()._clone()
        clone._tenant_scoped = self._tenant_scoped
        return clone

    def _require_scope(self):
        if not self._tenant_scoped:
            raise TenantScopeError(
                f"{self.model.__name__} query without a tenant: "
                "use .for_organization(org) or, deliberately, .all_tenants()"
            )

    def _fetch_all(self):
        self._require_scope()
        super()._fetch_all()

    def iterator(self, *args, **kwargs):
        self._require_scope()
        return super().iterator(*args, **kwargs)

    def count(self):
        self._require_scope()
        return super().count()

    def exists(self):
        self._require_scope()
        return super().exists()

    def aggregate(self, *args, **kwargs):
        self._require_scope()
        return super().aggregate(*args, **kwargs)

    def update(self, **kwargs):
        self._require_scope()
        return super().update(**kwargs)

    def delete(self):
        self._require_scope()
        return super().delete()


TenantManager = models.Manager.from_queryset(TenantQuerySet)


class UnscopedManager(models.Manager):
    """The plain manager Django's internals use (admin, relations, forms). Not for views."""

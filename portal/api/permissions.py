from rest_framework.permissions import BasePermission

from portal.roles import role_has_permission


class RolePermission(BasePermission):
    """Ask the role table: each view maps HTTP methods to the permission they need.

    ``required_permissions = {"GET": Perm.KEYS_VIEW, "POST": Perm.KEYS_MANAGE}``; a method
    missing from the map is refused, so a new handler cannot slip through unchecked.
    """

    message = "Your role does not allow this."

    def has_permission(self, request, view) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        required = getattr(view, "required_permissions", None)
        if required is None:
            return True  # views without a tenant (e.g. the schema) declare no map
        method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method
        permission = required.get(method)
        if permission is None:
            return False
        if permission == "*":
            return True
        if not role_has_permission(view.role, permission):
            self.message = f"Your role ({view.role}) lacks the {permission} permission."
            return False
        return True

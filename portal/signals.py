from django.dispatch import Signal

# Sent after commit when an organization's status or settings change; receivers
# republish what depends on it (the edge's key records).
organization_changed = Signal()

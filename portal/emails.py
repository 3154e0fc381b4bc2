from django.db import transaction
from django.template.loader import render_to_string

from portal.tasks import send_email


def email_send(*, to: str, template: str, context: dict) -> None:
    """Render ``emails/<template>_{subject,body}.txt`` and send it after the commit."""
    subject = " ".join(render_to_string(f"emails/{template}_subject.txt", context).split())
    body = render_to_string(f"emails/{template}_body.txt", context)
    transaction.on_commit(lambda: send_email.delay(to=[to], subject=subject, body=body))

"""Outgoing email: rendered in the request, sent by a Celery worker after the commit.

A message may carry a one-time link (an invitation, a password reset). The worker receives
only the id of the message, which waits in the cache, so the link never sits in the broker's
task arguments, where Celery's logs, events and error reports would show it.
"""

import logging
import uuid

from django.core.cache import cache
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template import TemplateDoesNotExist
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)

# Longer than the send task's retries take (8, backing off to at most 10 minutes apart).
EMAIL_STASH_SECONDS = 24 * 3600


def _stash_key(email_id: str) -> str:
    return f"email:{email_id}"


def email_queue(*, to: list[str], subject: str, body: str, html: str | None = None) -> None:
    """Send the message from a worker once the current transaction commits."""
    from portal.tasks import send_email

    def enqueue():
        email_id = uuid.uuid4().hex
        message = {"to": to, "subject": subject, "body": body, "html": html}
        cache.set(_stash_key(email_id), message, timeout=EMAIL_STASH_SECONDS)
        send_email.delay(email_id=email_id)

    transaction.on_commit(enqueue)


def email_send(*, to: str | list[str], template: str, context: dict) -> None:
    """Render ``emails/<template>_{subject,body}.txt`` (and ``_body.html`` when there is one) and
    send it after the commit."""
    subject = " ".join(render_to_string(f"emails/{template}_subject.txt", context).split())
    body = render_to_string(f"emails/{template}_body.txt", context)
    try:
        html = render_to_string(f"emails/{template}_body.html", context)
    except TemplateDoesNotExist:
        html = None
    email_queue(to=[to] if isinstance(to, str) else to, subject=subject, body=body, html=html)


def email_deliver(*, email_id: str) -> bool:
    """Send a queued message and forget it; False when it has expired or was already sent."""
    message = cache.get(_stash_key(email_id))
    if message is None:
        logger.warning("queued email not found, expired or already sent", extra={"email_id": email_id})
        return False
    email = EmailMultiAlternatives(subject=message["subject"], body=message["body"], to=message["to"])
    if message["html"]:
        email.attach_alternative(message["html"], "text/html")
    email.send()
    cache.delete(_stash_key(email_id))
    return True

from celery import shared_task
from django.core.mail import EmailMultiAlternatives


@shared_task(autoretry_for=(OSError,), retry_backoff=True, max_retries=8)
def send_email(*, to: list[str], subject: str, body: str, html: str | None = None) -> None:
    """Send one email through the configured backend."""
    message = EmailMultiAlternatives(subject=subject, body=body, to=to)
    if html:
        message.attach_alternative(html, "text/html")
    message.send()


@shared_task
def purge_idempotency_records() -> int:
    from portal.api.idempotency import idempotency_purge

    return idempotency_purge()

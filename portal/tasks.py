from celery import shared_task

from portal.emails import email_deliver


@shared_task(autoretry_for=(OSError,), retry_backoff=True, max_retries=8)
def send_email(*, email_id: str) -> None:
    """Send one queued email (portal.emails.email_queue) through the configured backend."""
    email_deliver(email_id=email_id)


@shared_task
def purge_idempotency_records() -> int:
    from portal.api.idempotency import idempotency_purge

    return idempotency_purge()

from celery import shared_task


@shared_task(autoretry_for=(Exception,), retry_backoff=True, max_retries=10)
def publish_keys(key_ids: list[int]) -> int:
    from keys.publication import keys_publish

    return keys_publish(key_ids)


@shared_task
def publish_organization(organization_id: int) -> int:
    from keys.publication import organization_publish

    return organization_publish(organization_id)


@shared_task
def reconcile_edge_records() -> dict:
    from keys.publication import edge_reconcile

    return edge_reconcile()


@shared_task
def send_rotation_reminders() -> int:
    from keys.reminders import rotation_reminders_send

    return rotation_reminders_send()

from celery import shared_task


@shared_task
def publish_prices() -> int:
    """Publish the prices in effect now (a scheduled price takes effect within a minute)."""
    from billing.edge_prices import prices_publish

    return prices_publish()

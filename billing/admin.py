from django.contrib import admin

from billing import services
from billing.models import ModelPrice
from portal.audit import Actor


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Prices are versions: staff add new ones; existing versions are never edited."""

    list_display = [
        "model",
        "input_per_mtok_minor",
        "output_per_mtok_minor",
        "cached_input_per_mtok_minor",
        "effective_from",
    ]
    search_fields = ["model"]
    list_filter = ["currency"]
    fields = [
        "model",
        "input_per_mtok_minor",
        "output_per_mtok_minor",
        "cached_input_per_mtok_minor",
        "effective_from",
    ]

    def has_change_permission(self, request, obj=None):
        return obj is None

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        price = services.model_price_set(
            actor=Actor.staff(request),
            model=obj.model,
            input_per_mtok_minor=obj.input_per_mtok_minor,
            output_per_mtok_minor=obj.output_per_mtok_minor,
            cached_input_per_mtok_minor=obj.cached_input_per_mtok_minor,
            effective_from=obj.effective_from,
        )
        obj.pk = price.pk

from django.conf import settings
from django.db import models
from django.utils import timezone


class ModelPrice(models.Model):
    """The price of a model from a moment on, in cents per million tokens (versioned by date)."""

    model = models.CharField(max_length=200, help_text="Model name exactly as clients request it.")
    input_per_mtok_minor = models.DecimalField(max_digits=16, decimal_places=6)
    output_per_mtok_minor = models.DecimalField(max_digits=16, decimal_places=6)
    cached_input_per_mtok_minor = models.DecimalField(max_digits=16, decimal_places=6)
    currency = models.CharField(max_length=3, default="usd")
    effective_from = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="modelprice_unique_version"),
            models.CheckConstraint(
                condition=models.Q(input_per_mtok_minor__gte=0)
                & models.Q(output_per_mtok_minor__gte=0)
                & models.Q(cached_input_per_mtok_minor__gte=0),
                name="modelprice_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from:%Y-%m-%d %H:%M}"

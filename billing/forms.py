"""Console forms for billing: what the Billing page's forms accept."""

from django import forms

from billing.models import BillingDetails


class BillingDetailsForm(forms.ModelForm):
    class Meta:
        model = BillingDetails
        fields = [
            "email",
            "company_name",
            "address_line1",
            "address_line2",
            "city",
            "postal_code",
            "state",
            "country",
            "tax_id_type",
            "tax_id_value",
        ]
        labels = {
            "email": "Billing email",
            "address_line1": "Address",
            "address_line2": "Address (second line)",
            "state": "State or region",
            "country": "Country code",
            "tax_id_type": "Tax id kind",
            "tax_id_value": "Tax id",
        }

    def clean_country(self) -> str:
        return self.cleaned_data["country"].strip().upper()


class SetupIntentForm(forms.Form):
    setup_intent = forms.CharField(max_length=255)

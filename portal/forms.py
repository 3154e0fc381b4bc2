from django import forms

from portal.roles import Role


class OrganizationCreateForm(forms.Form):
    name = forms.CharField(max_length=100)
    slug = forms.SlugField(max_length=50, required=False, help_text="Used in URLs. Leave empty to derive it.")


class OrganizationSettingsForm(forms.Form):
    name = forms.CharField(max_length=100)
    require_mfa = forms.BooleanField(required=False, label="Members must use two-factor authentication")


class InvitationForm(forms.Form):
    email = forms.EmailField()
    role = forms.ChoiceField(choices=Role.choices, initial=Role.DEVELOPER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


# A browser shows <input type="date"> in its own locale (mm/dd/yyyy in en-US) while the
# console writes every date as ISO; a text field that asks for YYYY-MM-DD reads the same
# everywhere and is what the pages, CSVs and API show.
ISO_DATE_ATTRS = {"pattern": r"\d{4}-\d{2}-\d{2}", "placeholder": "YYYY-MM-DD", "inputmode": "numeric"}


class IsoDateInput(forms.DateInput):
    input_type = "text"

    def __init__(self, attrs=None):
        super().__init__(attrs={**ISO_DATE_ATTRS, **(attrs or {})}, format="%Y-%m-%d")


class AuditFilterForm(forms.Form):
    action = forms.ChoiceField(required=False)
    actor = forms.CharField(required=False, max_length=254)
    since = forms.DateField(required=False, widget=IsoDateInput)
    until = forms.DateField(required=False, widget=IsoDateInput)

    def __init__(self, data=None, *, actions: list[str]):
        """Offer the actions this log holds, each family also as a whole (``member.``)."""
        super().__init__(data)
        families: dict[str, list[str]] = {}
        for action in sorted(actions):
            families.setdefault(action.split(".", 1)[0], []).append(action)
        self.fields["action"].choices = [("", "Any action")] + [
            (family, [(f"{family}.", f"All {family} events")] + [(action, action) for action in members])
            for family, members in families.items()
        ]

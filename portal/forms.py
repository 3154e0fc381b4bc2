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


class AuditFilterForm(forms.Form):
    action = forms.CharField(required=False, max_length=64)
    actor = forms.CharField(required=False, max_length=254)
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))

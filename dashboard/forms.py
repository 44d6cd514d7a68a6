"""Validation of what the dashboard's forms send; a bad value is a 400, never a 500."""

from __future__ import annotations

from django import forms

KEEP, EVACUATE = "keep", "evacuate"


class ActionForm(forms.Form):
    reason = forms.CharField(max_length=2000, required=False)
    # Radio buttons: letting sessions finish is preselected, evacuating is chosen.
    sessions = forms.ChoiceField(
        choices=[(KEEP, "let them finish"), (EVACUATE, "evacuate")], required=False
    )
    next = forms.CharField(max_length=2000, required=False)

    @property
    def evacuate(self) -> bool:
        return self.cleaned_data.get("sessions") == EVACUATE


class AgentRollbackForm(ActionForm):
    epoch = forms.IntegerField(min_value=0)


class RolloutActionForm(ActionForm):
    stage = forms.IntegerField(min_value=0, required=False)


class DrainForm(forms.Form):
    # Forcing a drain ends sessions early: say why, for the audit trail.
    reason = forms.CharField(max_length=2000, strip=True)
    sessions = forms.ChoiceField(
        choices=[("drain", "ask them to drain"), ("terminate", "terminate them")],
        required=False,
    )
    next = forms.CharField(max_length=2000, required=False)

    @property
    def terminate(self) -> bool:
        return self.cleaned_data.get("sessions") == "terminate"


class ConfirmAgentRollbackForm(forms.Form):
    """The confirm step's query: the routing epoch the page showed."""

    epoch = forms.IntegerField(min_value=0)


class ConfirmRolloutActionForm(forms.Form):
    stage = forms.IntegerField(min_value=0, required=False)


class WindowForm(forms.Form):
    window = forms.ChoiceField(required=False)

    def __init__(self, *args, windows: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["window"].choices = [(w, w) for w in windows]


class CompareForm(forms.Form):
    before = forms.IntegerField(min_value=1)
    after = forms.IntegerField(min_value=1)


class AuditFilterForm(forms.Form):
    action = forms.CharField(max_length=64, required=False)
    actor = forms.CharField(max_length=150, required=False)
    page = forms.IntegerField(min_value=1, max_value=100000, required=False)

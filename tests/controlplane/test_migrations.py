"""The migrations describe the models exactly, so a deploy's `migrate` builds the schema
the code expects."""

import io

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_no_model_change_is_missing_a_migration():
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exit_:
        pytest.fail(f"models and migrations differ (exit {exit_.code}):\n{out.getvalue()}")
    assert "No changes detected" in out.getvalue()

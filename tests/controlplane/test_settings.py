"""The environment helpers in controlplane/settings.py, and ``check --deploy``."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from controlplane import settings as prism

BASE_DIR = Path(prism.__file__).resolve().parent.parent


# --- envbool / envint ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on", " True "])
def test_envbool_reads_true(monkeypatch, value):
    monkeypatch.setenv("PRISM_FLAG", value)
    assert prism.envbool("PRISM_FLAG", "false") is True


@pytest.mark.parametrize("value", ["0", "false", "False", "no", "off", ""])
def test_envbool_reads_false(monkeypatch, value):
    monkeypatch.setenv("PRISM_FLAG", value)
    assert prism.envbool("PRISM_FLAG", "true") is False


def test_envbool_uses_the_default_when_unset(monkeypatch):
    monkeypatch.delenv("PRISM_FLAG", raising=False)
    assert prism.envbool("PRISM_FLAG", "true") is True
    assert prism.envbool("PRISM_FLAG", "false") is False


@pytest.mark.parametrize("value", ["maybe", "2", "enabled", "tru"])
def test_envbool_names_the_variable_for_a_bad_value(monkeypatch, value):
    monkeypatch.setenv("PRISM_FLAG", value)
    with pytest.raises(ImproperlyConfigured, match="PRISM_FLAG"):
        prism.envbool("PRISM_FLAG", "false")


def test_envint_reads_an_integer(monkeypatch):
    monkeypatch.setenv("PRISM_NUMBER", "31536000")
    assert prism.envint("PRISM_NUMBER", "0") == 31536000
    monkeypatch.delenv("PRISM_NUMBER")
    assert prism.envint("PRISM_NUMBER", "7") == 7


@pytest.mark.parametrize("value", ["1.5", "ten", "", "1e6", "0x10"])
def test_envint_names_the_variable_for_a_bad_value(monkeypatch, value):
    monkeypatch.setenv("PRISM_NUMBER", value)
    with pytest.raises(ImproperlyConfigured, match="PRISM_NUMBER"):
        prism.envint("PRISM_NUMBER", "0")


# --- database_from_url ---------------------------------------------------------------


def test_it_parses_a_postgres_url():
    db = prism.database_from_url(
        "DATABASE_URL", "postgres://prism:s%40cret@db.example.com:6543/prism?sslmode=require"
    )

    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert db["NAME"] == "prism"
    assert db["USER"] == "prism"
    assert db["PASSWORD"] == "s@cret"
    assert db["HOST"] == "db.example.com"
    assert db["PORT"] == "6543"
    assert db["OPTIONS"] == {
        "sslmode": "require",
        "prepare_threshold": 2**31 - 1,
        "connect_timeout": 3,
    }


def test_it_parses_a_postgresql_url_with_a_socket_directory():
    db = prism.database_from_url("DATABASE_URL", "postgresql://prism@/prism?host=/tmp/pg-sock")

    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert db["NAME"] == "prism"
    assert db["USER"] == "prism"
    assert db["PASSWORD"] == ""
    assert db["HOST"] == "/tmp/pg-sock"
    assert db["PORT"] == ""
    assert "host" not in db["OPTIONS"]


def test_a_postgres_url_without_a_host_uses_the_local_socket():
    db = prism.database_from_url("DATABASE_URL", "postgres:///prism")

    assert db["HOST"] == ""
    assert db["NAME"] == "prism"


def test_a_port_in_the_query_is_not_left_in_the_options():
    db = prism.database_from_url("DATABASE_URL", "postgres://h:5432/prism?port=6543")

    assert db["PORT"] == "5432"
    assert "port" not in db["OPTIONS"]


@pytest.mark.parametrize(
    "url",
    [
        "postgres://db.example.com/",
        "postgres://db.example.com",
        "postgres://u:pw@db.example.com:notaport/prism",
        "postgres://u:pw@db.example.com:99999/prism",
        "mysql://u:pw@db.example.com/prism",
        "postgres://u:pw@db.example.com:5432",
        "db.example.com/prism",
        "",
    ],
)
def test_a_bad_database_url_names_the_variable(url):
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        prism.database_from_url("DATABASE_URL", url)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://prism:hunter2@db/prism",
        "postgres://prism:hunter2@db:5432/",
        "postgres://prism:hunter2@db:port/prism",
    ],
)
def test_a_bad_database_url_does_not_leak_the_password(url):
    with pytest.raises(ImproperlyConfigured) as excinfo:
        prism.database_from_url("DATABASE_URL", url)

    assert "hunter2" not in str(excinfo.value)
    assert "db" in str(excinfo.value)


def test_it_parses_an_absolute_sqlite_url():
    db = prism.database_from_url("DATABASE_URL", "sqlite:////srv/prism/db.sqlite3")

    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["NAME"] == "/srv/prism/db.sqlite3"
    assert "journal_mode=WAL" in db["OPTIONS"]["init_command"]


def test_a_relative_sqlite_url_is_relative_to_the_project():
    db = prism.database_from_url("DATABASE_URL", "sqlite:///var/test.sqlite3")

    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["NAME"] == str(BASE_DIR / "var" / "test.sqlite3")


def test_the_test_database_is_postgresql():
    """The suite's contract: it runs on PostgreSQL (scripts/test starts one)."""
    from django.conf import settings

    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


# --- check --deploy ------------------------------------------------------------------


def production_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PRISM_")}
    env.update(
        DATABASE_URL=os.environ["DATABASE_URL"],
        SECRET_KEY=secrets.token_urlsafe(64),
        DEBUG="false",
        ALLOWED_HOSTS="prism.example.com",
        SECURE_SSL_REDIRECT="true",
        SECURE_COOKIES="true",
        SECURE_HSTS_SECONDS="31536000",
        DJANGO_SETTINGS_MODULE="controlplane.settings",
    )
    return env


def test_check_deploy_passes_with_production_settings():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"],
        cwd=BASE_DIR,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    issues = re.findall(r"^\S*: \(([\w.]+)\)", output, flags=re.MULTILINE)
    # Schema warnings are the schema's business: test_api_docs fails on those.
    assert [i for i in issues if not i.startswith("drf_spectacular.")] == [], output


def test_a_bad_variable_stops_start_up_naming_it():
    env = {**production_env(), "SECURE_HSTS_SECONDS": "a year"}

    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode != 0
    assert "SECURE_HSTS_SECONDS" in result.stderr

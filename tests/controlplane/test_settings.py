"""The environment helpers in controlplane/settings.py, and ``check --deploy``."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading
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


def test_envcount_reads_a_count_and_refuses_one_below_its_minimum(monkeypatch):
    monkeypatch.setenv("PRISM_RETAIN_SESSIONS_DAYS", "0")
    assert prism.envcount("PRISM_RETAIN_SESSIONS_DAYS", "90") == 0
    monkeypatch.setenv("PRISM_RETAIN_SESSIONS_DAYS", "-1")
    with pytest.raises(ImproperlyConfigured, match="PRISM_RETAIN_SESSIONS_DAYS"):
        prism.envcount("PRISM_RETAIN_SESSIONS_DAYS", "90")
    monkeypatch.setenv("PRISM_RETENTION_BATCH", "0")
    with pytest.raises(ImproperlyConfigured, match="PRISM_RETENTION_BATCH must be at least 1"):
        prism.envcount("PRISM_RETENTION_BATCH", "5000", minimum=1)


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


# --- SECRET_KEY ----------------------------------------------------------------------

OLD_CONSTANT = "prism-embedded-insecure-key-change-me-for-production-0123456789"


def embedded_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh embedded install: no SECRET_KEY, no DATABASE_URL."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PRISM_") and key not in {"SECRET_KEY", "DATABASE_URL", "DEBUG"}
    }
    env.update(PRISM_VAR_DIR=str(var_dir), DJANGO_SETTINGS_MODULE="controlplane.settings")
    env.update(extra)
    return env


def setting(env: dict[str, str], name: str) -> subprocess.CompletedProcess:
    """Import the settings in a fresh interpreter and print one of them."""
    return subprocess.run(
        [sys.executable, "-c", f"from controlplane import settings; print(settings.{name})"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_a_secret_key_one_is_generated_on_first_start_and_kept(tmp_path):
    first = setting(embedded_env(tmp_path), "SECRET_KEY")
    second = setting(embedded_env(tmp_path), "SECRET_KEY")
    elsewhere = setting(embedded_env(tmp_path / "other"), "SECRET_KEY")

    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert len(key) >= 50
    assert key != OLD_CONSTANT
    assert second.stdout.strip() == key
    assert elsewhere.stdout.strip() not in ("", key)
    path = tmp_path / "secret_key"
    assert path.read_text().strip() == key
    assert path.stat().st_mode & 0o777 == 0o600


def test_workers_starting_at_once_agree_on_one_generated_key(tmp_path):
    """Every process of a first start (web workers, the worker, the beat) signs with the
    same key, whichever of them created the file."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "from controlplane import settings; print(settings.SECRET_KEY)"],
            cwd=BASE_DIR,
            env=embedded_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    keys = set()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        keys.add(out.strip())

    assert len(keys) == 1
    assert keys != {OLD_CONSTANT}
    assert sorted(p.name for p in tmp_path.iterdir() if "secret" in p.name) == ["secret_key"]


def test_threads_racing_for_the_key_file_all_read_the_winners_key(tmp_path):
    """The race decided by O_CREAT | O_EXCL: one thread writes, the others read."""
    barrier = threading.Barrier(8)
    keys: list[str] = []

    def start() -> None:
        barrier.wait(timeout=10)
        keys.append(prism.generated_secret_key(tmp_path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(keys) == 8
    assert len(set(keys)) == 1
    assert (tmp_path / "secret_key").read_text().strip() == keys[0]


def test_a_key_file_left_empty_by_a_crashed_start_stops_start_up_naming_it(tmp_path):
    (tmp_path / "secret_key").touch(mode=0o600)

    with pytest.raises(ImproperlyConfigured, match="secret_key"):
        prism.generated_secret_key(tmp_path, wait_s=0.2)


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    env = embedded_env(tmp_path, DATABASE_URL="postgres://prism@db.example.com/prism")

    result = setting(env, "SECRET_KEY")

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY" in result.stderr
    assert not (tmp_path / "secret_key").exists()


# --- X-Forwarded-Proto ---------------------------------------------------------------


def test_a_forwarded_proto_header_is_not_trusted_by_default(anonymous, db, settings):
    """Otherwise any client could claim HTTPS and skip the redirect to it."""
    settings.SECURE_SSL_REDIRECT = True

    response = anonymous.get("/api/agents/", HTTP_X_FORWARDED_PROTO="https")

    assert response.status_code == 301
    assert response["Location"].startswith("https://")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "None"),
        ("false", "None"),
        ("true", "('HTTP_X_FORWARDED_PROTO', 'https')"),
    ],
)
def test_trusting_the_forwarded_proto_is_an_environment_choice(tmp_path, value, expected):
    extra = {} if value is None else {"PRISM_TRUST_X_FORWARDED_PROTO": value}

    result = setting(embedded_env(tmp_path, **extra), "SECURE_PROXY_SSL_HEADER")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_a_bad_trust_value_stops_start_up_naming_the_variable(tmp_path):
    env = embedded_env(tmp_path, PRISM_TRUST_X_FORWARDED_PROTO="sometimes")

    result = setting(env, "SECURE_PROXY_SSL_HEADER")

    assert result.returncode != 0
    assert "PRISM_TRUST_X_FORWARDED_PROTO" in result.stderr


# --- /metrics protection -------------------------------------------------------------


def test_envnetworks_reads_cidrs_and_single_addresses(monkeypatch):
    monkeypatch.setenv("PRISM_NETS", " 10.0.0.0/8, 192.0.2.7 ,2001:db8::/32")
    assert prism.envnetworks("PRISM_NETS", "") == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
    monkeypatch.setenv("PRISM_NETS", "")
    assert prism.envnetworks("PRISM_NETS", "127.0.0.1/32") == []


@pytest.mark.parametrize("value", ["10.0.0.1/8", "10.0.0.0/33", "localhost", "10.0.0.0/8;"])
def test_envnetworks_names_the_variable_for_a_bad_network(monkeypatch, value):
    monkeypatch.setenv("PRISM_NETS", value)
    with pytest.raises(ImproperlyConfigured, match="PRISM_NETS"):
        prism.envnetworks("PRISM_NETS", "")


def test_the_metrics_allow_only_loopback_and_no_token_by_default(tmp_path):
    env = embedded_env(tmp_path)

    networks = setting(env, "PRISM_METRICS_ALLOW_NETWORKS")
    token = setting(env, "PRISM_METRICS_TOKEN")

    assert networks.stdout.strip() == "['127.0.0.1/32', '::1/128']", networks.stderr
    assert token.returncode == 0
    assert token.stdout.strip() == ""


def test_a_short_metrics_token_stops_start_up_naming_the_variable(tmp_path):
    result = setting(embedded_env(tmp_path, PRISM_METRICS_TOKEN="short"), "PRISM_METRICS_TOKEN")

    assert result.returncode != 0
    assert "PRISM_METRICS_TOKEN" in result.stderr

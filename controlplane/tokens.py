"""Revoking API tokens: one conditional write and its audit entry, for the command and
the admin alike."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from controlplane.models import KEY_PREFIX, ApiToken, hash_key
from versions.audit import record

KEY_LENGTH = len(KEY_PREFIX) + 40
MIN_PREFIX = 4


class NoSuchToken(Exception):
    pass


class Ambiguous(Exception):
    def __init__(self, tokens: list[ApiToken]) -> None:
        listed = ", ".join(f"{t.prefix}… of {t.user} ({t.created_at:%Y-%m-%d})" for t in tokens)
        super().__init__(f"{len(tokens)} tokens match: {listed}. Give the whole key.")


def find(value: str) -> ApiToken:
    """The one token a whole key or the start of its prefix names.

    1. A whole key (``prism_`` and 40 hex digits) names its token by hash.
    2. Anything else is a prefix, with or without ``prism_``, of at least four
       characters; it must match exactly one token.
    """
    value = value.strip()
    tokens: QuerySet[ApiToken] = ApiToken.objects.select_related("user")
    if value.startswith(KEY_PREFIX) and len(value) == KEY_LENGTH:
        token = tokens.filter(key_hash=hash_key(value)).first()
        if token is None:
            raise NoSuchToken("No token has this key.")
        return token
    prefix = value.removeprefix(KEY_PREFIX)
    if len(prefix) < MIN_PREFIX:
        raise NoSuchToken(f"Give the whole key or at least {MIN_PREFIX} characters of a prefix.")
    found = list(tokens.filter(prefix__startswith=prefix[:8]).order_by("created_at")[:10])
    if not found:
        raise NoSuchToken(f"No token starts with {prefix!r}.")
    if len(found) > 1:
        raise Ambiguous(found)
    return found[0]


def revoke(token: ApiToken, *, actor: Any, reason: str) -> bool:
    """Revoke ``token`` from now on; False if it was revoked already. Audited once: the
    conditional update decides between concurrent revocations."""
    now = timezone.now()
    with transaction.atomic():
        updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=now
        )
        if not updated:
            return False
        token.revoked_at = now
        record(
            "token.revoked",
            token.user,
            actor=actor,
            reason=reason,
            before={"prefix": token.prefix, "revoked_at": None},
            after={"prefix": token.prefix, "revoked_at": now.isoformat()},
        )
    return True

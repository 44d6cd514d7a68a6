import argparse
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from controlplane.models import ApiToken, Profile, Role
from versions.audit import record
from versions.models import Agent

MAX_DAYS = 3650


def days(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"must be a whole number of days from 1 to {MAX_DAYS}")
    return number


class Command(BaseCommand):
    help = (
        "Create USERNAME if needed, give it ROLE, and print a new API token (only that). "
        "--agent scopes the token to those agents; --expires-in-days gives it an expiry."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=[r.value for r in Role])
        parser.add_argument(
            "--agent",
            action="append",
            dest="agents",
            metavar="SLUG",
            help="Only this agent (repeat for several). Without it: every agent.",
        )
        parser.add_argument("--expires-in-days", type=days, metavar="N")

    def handle(self, *args, username: str, role: str, agents, expires_in_days, **options):
        username = username.strip()
        if not username or len(username) > 150:
            raise CommandError("USERNAME must be 1 to 150 characters")
        scope = None if agents is None else sorted(set(agents))
        expires_at = (
            None if expires_in_days is None else timezone.now() + timedelta(days=expires_in_days)
        )
        with transaction.atomic():
            if scope is not None:
                known = set(Agent.objects.filter(slug__in=scope).values_list("slug", flat=True))
                missing = [slug for slug in scope if slug not in known]
                if missing:
                    raise CommandError(", ".join(f"No agent {slug!r}." for slug in missing))
            user, created = get_user_model().objects.get_or_create(username=username)
            if created:
                user.set_unusable_password()
                user.save(update_fields=["password"])
            profile, new_profile = Profile.objects.get_or_create(user=user, defaults={"role": role})
            before = None if new_profile else profile.role
            if profile.role != role:
                profile.role = role
                profile.save(update_fields=["role"])
            key = ApiToken.issue(user, agents=scope, expires_at=expires_at)
            after: dict = {"role": role}
            if scope is not None:
                after["agents"] = scope
            if expires_at is not None:
                after["expires_at"] = expires_at.isoformat()
            record(
                "token.issued",
                user,
                actor="cli",
                reason=f"issue_token --role {role}",
                before={"role": before},
                after=after,
            )
        self.stdout.write(key)

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from controlplane.models import ApiToken, Profile, Role
from versions.audit import record


class Command(BaseCommand):
    help = "Create USERNAME if needed, give it ROLE, and print a new API token (only that)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=[r.value for r in Role])

    def handle(self, *args, username: str, role: str, **options):
        username = username.strip()
        if not username or len(username) > 150:
            raise CommandError("USERNAME must be 1 to 150 characters")
        with transaction.atomic():
            user, created = get_user_model().objects.get_or_create(username=username)
            if created:
                user.set_unusable_password()
                user.save(update_fields=["password"])
            profile, new_profile = Profile.objects.get_or_create(user=user, defaults={"role": role})
            before = None if new_profile else profile.role
            if profile.role != role:
                profile.role = role
                profile.save(update_fields=["role"])
            key = ApiToken.issue(user)
            record(
                "token.issued",
                user,
                actor="cli",
                reason=f"issue_token --role {role}",
                before={"role": before},
                after={"role": role},
            )
        self.stdout.write(key)

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from controlplane.models import Profile, Role


class Command(BaseCommand):
    help = "Create (or reset) the demo release-manager login and print its credentials."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="prism-demo")

    def handle(self, *args, username: str, password: str, **options):
        with transaction.atomic():
            user, _ = get_user_model().objects.get_or_create(username=username)
            user.is_staff = True
            user.is_superuser = True
            user.set_password(password)
            user.save()
            Profile.objects.update_or_create(user=user, defaults={"role": Role.RELEASE_MANAGER})
        self.stdout.write(f"Demo login: {username} / {password} (release manager)")

from django.core.management.base import BaseCommand, CommandError

from controlplane import tokens


class Command(BaseCommand):
    help = (
        "Revoke the API token a whole key or a prefix (as the admin lists it) names. "
        "It gets 401 from the next request on."
    )

    def add_arguments(self, parser):
        parser.add_argument("key_or_prefix", metavar="PREFIX_OR_KEY")

    def handle(self, *args, key_or_prefix: str, **options):
        try:
            token = tokens.find(key_or_prefix)
        except (tokens.NoSuchToken, tokens.Ambiguous) as exc:
            raise CommandError(str(exc)) from None
        if tokens.revoke(token, actor="cli", reason="revoke_token"):
            self.stdout.write(f"Revoked token {token.prefix}… of {token.user}.")
        else:
            self.stdout.write(
                f"Token {token.prefix}… of {token.user} was already revoked "
                f"at {token.revoked_at:%Y-%m-%d %H:%M:%S %Z}."
            )

from django.apps import AppConfig
from django.db.models.signals import post_save


class RolloutsConfig(AppConfig):
    name = "rollouts"

    def ready(self) -> None:
        # The versions app owns the drain policy but may not import rollouts: a signal
        # lets a policy change reach the live-version cap. Imported here, once the
        # models are loaded.
        from rollouts.drain import on_agent_saved
        from versions.models import Agent

        post_save.connect(on_agent_saved, sender=Agent, dispatch_uid="rollouts.live_version_cap")

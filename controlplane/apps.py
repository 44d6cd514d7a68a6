from django.apps import AppConfig


class ControlPlaneConfig(AppConfig):
    name = "controlplane"
    verbose_name = "Access"

    def ready(self) -> None:
        from controlplane import schema  # noqa: F401  (registers the auth scheme)

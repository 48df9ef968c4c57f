from django.apps import AppConfig


class PushServerConfig(AppConfig):
    name = "pushserver"
    verbose_name = "Push server"

    def ready(self) -> None:
        from pushserver import checks

        checks.register()

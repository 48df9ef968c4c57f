from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "demo"

    def ready(self) -> None:
        # Connects the channel_subscribe / channel_unsubscribe receivers.
        from demo import presence  # noqa: F401

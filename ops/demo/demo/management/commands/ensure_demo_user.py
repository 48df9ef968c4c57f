from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Creates the demo user (settings.DEMO_USERNAME / DEMO_PASSWORD) unless it exists."

    def handle(self, *args: object, **options: object) -> None:
        username = settings.DEMO_USERNAME
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"Demo user {username!r} exists.")
            return
        User.objects.create_user(username, password=settings.DEMO_PASSWORD)
        self.stdout.write(f"Created demo user {username!r} (password {settings.DEMO_PASSWORD!r}).")

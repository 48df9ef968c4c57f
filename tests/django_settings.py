"""Django settings for the pushserver app's own tests: the app installed, nothing else needed."""

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "pushserver",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
# This module doubles as the URLconf: the tests need no URLs.
ROOT_URLCONF = "tests.django_settings"
urlpatterns: list[object] = []
USE_TZ = True
PUSH_SERVER: dict[str, object] = {}

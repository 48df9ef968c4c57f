"""Settings of the demo site: one process serves the pages, the passthrough
view and the push locations (`manage.py runpushserver --allrequests` on
127.0.0.1:8000, broker and edge embedded).

For local use only: the secret key is public and DEBUG is on (DEBUG is also
what makes `runpushserver --allrequests` serve the static files).
"""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "demo-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
# The passthrough view trusts callers from these addresses: the edge runs
# in this very process and calls http://127.0.0.1:8000/passthrough.
INTERNAL_IPS = ["127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "pushserver",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo.urls"
WSGI_APPLICATION = "demo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
    }
}

# Presence (demo/presence.py) lives here. The local-memory cache is private
# to one process, which is enough because runpushserver --allrequests runs
# the whole site in one; a site with several processes needs a shared cache.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "demo"}
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_TZ = True
STATIC_URL = "static/"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "login"

# The pages and the push locations share one address, so the page polls
# its own origin and needs no CORS.
PUSH_SERVER = {
    "address": "127.0.0.1",
    "port": 8000,
    "publisher_host": {"location": "127.0.0.1:8000", "secure": False},
    "subscriber_host": {"location": "127.0.0.1:8000", "secure": False},
    "store": {"type": "memory", "min_messages": 0, "max_messages": 100, "message_timeout": 60},
    "locations": (
        {
            "type": "subscriber",
            "url": r"/updates/([^/]+)",
            "polling": "long",
            "create_on_get": True,
            # The edge tells this URL (demo/urls.py) of every subscribe and
            # unsubscribe; the signals it fires feed the presence list.
            "passthrough": "http://127.0.0.1:8000/passthrough",
            # A browser re-polls after every update; within 5 s that is the
            # same visit, so presence does not flap on each tick. Leaving is
            # reported up to 5 s late.
            "passthrough_grace": 5,
        },
        {"type": "publisher", "url": r"/send-update/([^/]+)"},
    ),
}

# The user `make demo` creates (see the ensure_demo_user command).
DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo"
# Channel the page subscribes to and everything is published on.
DEMO_CHANNEL_ID = "demo"

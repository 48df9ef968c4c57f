"""URLs of the pushserver app: the passthrough view edges call.

Include them under the path named in a subscriber location's
``passthrough``::

    path("passthrough", include("pushserver.urls"))
    re_path(r"^passthrough", include("pushserver.urls"))  # the original's url() form

The one pattern matches what is left after that prefix: nothing, or a
trailing slash, so ``/passthrough`` and ``/passthrough/`` both reach the
view without a redirect (an edge's POST would not follow one).
"""

from django.urls import re_path

from pushserver import views

app_name = "pushserver"
urlpatterns = [
    # Not r"^/?$": Django warns (urls.W002) about patterns starting with a slash.
    re_path(r"^(?:/)?$", views.passthrough, name="passthrough"),
]

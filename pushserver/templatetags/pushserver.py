"""``{% load pushserver %}``: the ``channel_url`` tag.

``{% channel_url "some_channel_id" %}`` outputs the channel's absolute
subscriber URL on the edges (see `pushserver.locations`); the id may be a
variable, and ``{% channel_url id as url %}`` stores it instead. Several
ids, ``{% channel_url "news" user_channel %}``, give the URL of one
EventSource stream of them all. On a
signed location the URL carries a token, valid for ``signed_url_lifetime``
or ``{% channel_url id lifetime=600 %}`` seconds. Like any
simple tag the output is autoescaped; inside a script write
``'{% filter escapejs %}{% channel_url "x" %}{% endfilter %}'``.
"""

from __future__ import annotations

from typing import Any

from django import template

from pushserver import locations

register = template.Library()


@register.simple_tag
def channel_url(*channel_ids: Any, lifetime: float | None = None) -> str:
    # Ids are often primary keys or other non-strings; the channel is their text.
    return locations.subscriber_url(*(str(one) for one in channel_ids), lifetime=lifetime)

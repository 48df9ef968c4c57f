"""Signals around publishing and around a browser's subscription.

``pre_send_update`` and ``post_send_update`` are sent by ``send_update``
with ``channel_id``, ``data`` and ``already_serialized``;
``post_send_update`` also gets ``error``: None, or the `PushServerError`
that stopped the message (sent before the error is raised or ignored).

``channel_subscribe`` and ``channel_unsubscribe`` are sent with
``request`` and ``channel_id`` when an edge reports that a browser started
or stopped listening on a channel.
"""

from django.dispatch import Signal

pre_send_update = Signal()
post_send_update = Signal()
channel_subscribe = Signal()
channel_unsubscribe = Signal()

"""The edge: holds browsers' polls and answers them by the push relay protocol.

Its HTTP port is an asyncio protocol of its own (`edge.connection`) that
answers the subscriber locations itself, from channel buffers the broker
feeds (`edge.feed`), and hands every other request (the publisher
location, the metrics, the WSGI fallback) to a Tornado application.

Never imports Django; it reaches Django only over HTTP (the passthrough)
and through the optional WSGI fallback handed to it by `runpushserver`.
"""

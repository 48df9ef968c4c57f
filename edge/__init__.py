"""The edge: a Tornado server speaking the push relay protocol to browsers.

Never imports Django; it reaches Django only over HTTP (the passthrough)
and through the optional WSGI fallback handed to it by `runpushserver`.
"""

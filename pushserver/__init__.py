"""Realtime push for Django sites.

Only the exception lives here, so ``pushserver.PushServerError`` can be
caught without importing Django or ZeroMQ.
"""


class PushServerError(Exception):
    """The push broker could not take a message: unreachable, or its queue is full."""

"""What the push locations share: refusals with a reason, the channel id, methods.

The subscriber and publisher locations answer on the edge's own connection
and take only the refusals, the channel id and `anchored`; `PushHandler` is
the base of the handlers Tornado serves (metrics, the 404 where no location
matches). Tornado's defaults fight the protocol in two places, both
switched off in it: it computes an Etag for GET responses and turns a
matching If-None-Match into 304 (the protocol's Etag is a message tag, not
a body hash), and it answers unknown methods 405 without an Allow header.
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

import tornado.web

from broker.wire import channel_id_problem


def anchored(pattern: str) -> str:
    """A location pattern as Tornado matches it: anchored at the start by `re.match`,
    so a leading ^ is dropped rather than doubled."""
    return pattern.removeprefix("^")


class AnyMethod(tuple[str, ...]):
    """Lets every method reach `prepare`, which answers 405 with `Allow`."""

    def __contains__(self, item: object) -> bool:
        return True


class Refusal(tornado.web.HTTPError):
    """A request refused with a short reason for the client."""

    def __init__(self, status: int, why: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(status)
        self.why = why
        self.headers = headers or []


def checked_channel_id(raw: bytes) -> str:
    """A location's percent-decoded path group as a channel id, or a 400 saying why not."""
    try:
        channel_id = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(400, "channel id is not UTF-8") from None
    problem = channel_id_problem(channel_id)
    if problem:
        raise Refusal(400, problem)
    return channel_id


class PushHandler(tornado.web.RequestHandler):
    SUPPORTED_METHODS = AnyMethod(())
    ALLOWED: ClassVar[tuple[str, ...]] = ()

    def set_default_headers(self) -> None:
        self.clear_header("Content-Type")

    def compute_etag(self) -> None:
        return None

    def prepare(self) -> None:
        if self.request.method not in self.ALLOWED:
            raise Refusal(
                405,
                f"method {self.request.method} not allowed here",
                [("Allow", ", ".join(self.ALLOWED))],
            )

    def refuse(self, status: int, why: str) -> NoReturn:
        raise Refusal(status, why)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, Refusal):
            why = error.why
            for name, value in error.headers:
                self.set_header(name, value)
        else:
            why = self._reason
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(why + "\n")

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, Refusal):
            return  # the client was told why; a log line per bad request is noise
        super().log_exception(typ, value, tb)

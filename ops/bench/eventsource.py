"""W6's load generator: EventSource streams, read as a browser reads them.

Each stream asks as a browser's EventSource does (`Accept:
text/event-stream`, and `Last-Event-ID` when it opens again) and reads the
body through `ops.bench.eventstream`, chunked or not, as the server frames
it (Nchan sends it unframed on a keep-alive connection). Opening, checking
and reopening are `ops.bench.streams`'.

The trap: a long-poll's answer (a `200` with a message and no
`text/event-stream`) would read as a stream that got one event; it fails
the workload instead.
"""

from __future__ import annotations

from ops.bench.eventstream import ChunkedDecoder, EventStreamParser
from ops.bench.streams import Stream, StreamConnection

EVENT_STREAM = b"text/event-stream"
MESSAGE = b"message"


class EventSourceProtocol(StreamConnection):
    def __init__(self, stream: Stream, host: str, port: int) -> None:
        super().__init__(stream, host, port)
        self.head = bytearray()
        self.chunked: ChunkedDecoder | None = None
        self.parser = EventStreamParser()

    def request(self) -> bytes:
        stream = self.stream
        resume = b""
        if stream.last_event_id:
            resume = b"Last-Event-ID: " + stream.last_event_id + b"\r\n"
        return (
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\n%s\r\n"
            % (stream.target_path.encode(), self.host.encode(), self.port, resume)
        )

    def data_received(self, data: bytes) -> None:
        if not self.accepted:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            data = bytes(self.head[end + 4 :])
            if not self._accept(bytes(self.head[:end])):
                return
        if self.chunked is not None:
            data = self.chunked.feed(data)
        if not data:
            return
        stream = self.stream
        parser = self.parser
        for event in parser.feed(data):
            if event.type != MESSAGE:
                stream.named[event.type] += 1
                continue
            self.deliver(event.last_event_id if event.own_id else None, event.data)
        # Moved by an event without data too, as EventSource's is.
        stream.last_event_id = parser.last_event_id

    def _accept(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        content_type = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-type":
                content_type = value.strip().lower()
            elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = ChunkedDecoder()
        if status != 200:
            self.refused()
            return False
        if not content_type.startswith(EVENT_STREAM):
            self.not_a_stream(
                f"GET {self.stream.target_path} with Accept: text/event-stream was answered "
                f"with Content-Type {content_type.decode('latin-1')!r}"
            )
            return False
        self.accept()
        return True

'use strict';

// What the browser gives the client, faked for node's test runner: a clock
// whose timers run only when a test advances it, EventSource, WebSocket and
// XMLHttpRequest whose connections a test answers by hand, and a window
// that fires pagehide / pageshow on demand. Outside js/test/ so that node
// --test does not count this file as a test of its own.

// Timers that run only when the test advances time.
function fakeClock() {
  let time = 0;
  let nextId = 1;
  const timers = new Map();
  return {
    now: () => time,
    setTimeout(fn, ms) {
      const id = nextId++;
      timers.set(id, { at: time + Math.max(0, ms), fn });
      return id;
    },
    clearTimeout(id) {
      timers.delete(id);
    },
    pending: () => timers.size,
    advance(ms) {
      const end = time + ms;
      for (;;) {
        let earliest = null;
        for (const [id, timer] of timers) {
          if (timer.at <= end && (earliest === null || timer.at < timers.get(earliest).at)) {
            earliest = id;
          }
        }
        if (earliest === null) {
          break;
        }
        const { at, fn } = timers.get(earliest);
        timers.delete(earliest);
        time = at;
        fn();
      }
      time = end;
    },
  };
}

// An EventSource class whose instances a test drives: open(), send(id,
// data, event), answer(status) for a refusal, drop() for a lost
// connection, end() for a stream the server ended. Like a browser's, a
// refusal leaves readyState CLOSED, a lost connection CONNECTING, and
// nothing is dispatched to a closed one.
function fakeEventSourceClass(clock) {
  const instances = [];
  class FakeEventSource {
    constructor(url, init = {}) {
      this.url = url;
      this.withCredentials = Boolean(init.withCredentials);
      this.readyState = FakeEventSource.CONNECTING;
      this.openedAt = clock.now();
      this.listeners = new Map();
      this.onopen = null;
      this.onerror = null;
      this.closed = false;
      instances.push(this);
    }

    addEventListener(type, fn) {
      if (!this.listeners.has(type)) {
        this.listeners.set(type, []);
      }
      this.listeners.get(type).push(fn);
    }

    close() {
      this.readyState = FakeEventSource.CLOSED;
      this.closed = true;
    }

    // The URL's query as a Map.
    query() {
      return new Map(new URL(this.url).searchParams);
    }

    dispatch(type, event) {
      if (this.closed) {
        return;
      }
      const handler = type === 'open' ? this.onopen : type === 'error' ? this.onerror : null;
      if (handler) {
        handler.call(this, event);
      }
      for (const fn of (this.listeners.get(type) || []).slice()) {
        fn.call(this, event);
      }
    }

    open() {
      this.readyState = FakeEventSource.OPEN;
      this.dispatch('open', { type: 'open' });
    }

    send(id, data, event = 'message') {
      if (id !== null) {
        this.lastEventId = id;
      }
      const text = typeof data === 'string' ? data : JSON.stringify(data);
      this.dispatch(event, { type: event, data: text, lastEventId: this.lastEventId || '' });
    }

    missed(channelId) {
      this.send(null, { channel_id: channelId }, 'pushserver-missed');
    }

    deleted(channelId) {
      this.send(null, { channel_id: channelId }, 'pushserver-deleted');
      this.end();
    }

    answer() {
      this.readyState = FakeEventSource.CLOSED;
      this.dispatch('error', { type: 'error' });
    }

    drop() {
      this.readyState = FakeEventSource.CONNECTING;
      this.dispatch('error', { type: 'error' });
    }

    end() {
      this.drop();
    }
  }
  FakeEventSource.CONNECTING = 0;
  FakeEventSource.OPEN = 1;
  FakeEventSource.CLOSED = 2;
  FakeEventSource.instances = instances;
  FakeEventSource.live = () => instances.filter((source) => !source.closed);
  return FakeEventSource;
}

// A WebSocket class whose instances a test drives as an edge would:
// open(protocol) completes the handshake (ws+meta.nchan unless told
// otherwise), message(id, data, contentType) sends a ws+meta.nchan frame,
// notice(event, channelId, id) one of the edge's notices, frame(data) any
// frame, closeWith(code, reason) a close from the edge, fail() a handshake
// that did not succeed (close 1006 before open). A socket the client closed
// dispatches nothing more.
function fakeWebSocketClass(clock) {
  const instances = [];
  class FakeWebSocket {
    constructor(url, protocols = []) {
      this.url = url;
      this.protocols = Array.isArray(protocols) ? protocols : [protocols];
      this.protocol = '';
      this.binaryType = 'blob';
      this.readyState = FakeWebSocket.CONNECTING;
      this.openedAt = clock.now();
      this.onopen = null;
      this.onmessage = null;
      this.onclose = null;
      this.onerror = null;
      this.closed = false;
      this.closedWith = null;
      instances.push(this);
    }

    close(code = 1000, reason = '') {
      if (!this.closed) {
        this.closed = true;
        this.closedWith = { code, reason };
        this.readyState = FakeWebSocket.CLOSED;
      }
    }

    query() {
      return new Map(new URL(this.url).searchParams);
    }

    dispatch(name, event) {
      if (!this.closed && this[name]) {
        this[name].call(this, event);
      }
    }

    open(protocol = 'ws+meta.nchan') {
      this.protocol = protocol;
      this.readyState = FakeWebSocket.OPEN;
      this.dispatch('onopen', { type: 'open' });
    }

    frame(data) {
      this.dispatch('onmessage', { type: 'message', data });
    }

    message(id, data, contentType = 'application/json') {
      const text = typeof data === 'string' ? data : JSON.stringify(data);
      const type = contentType ? `content-type: ${contentType}\n` : '';
      this.frame(`id: ${id}\n${type}\n${text}`);
    }

    notice(event, channelId, id) {
      const data = JSON.stringify({ event, channel_id: channelId });
      this.frame(`id: ${id}\ncontent-type: application/vnd.pushserver.notice+json\n\n${data}`);
    }

    closeWith(code, reason = '') {
      this.readyState = FakeWebSocket.CLOSED;
      this.dispatch('onclose', { type: 'close', code, reason, wasClean: code !== 1006 });
      this.closed = true;
    }

    fail() {
      this.dispatch('onerror', { type: 'error' });
      this.closeWith(1006);
    }
  }
  FakeWebSocket.CONNECTING = 0;
  FakeWebSocket.OPEN = 1;
  FakeWebSocket.CLOSING = 2;
  FakeWebSocket.CLOSED = 3;
  FakeWebSocket.instances = instances;
  FakeWebSocket.live = () => instances.filter((socket) => !socket.closed);
  return FakeWebSocket;
}

// An XMLHttpRequest class whose requests a test answers: respond(status,
// headers, body), message(id, body, headers) for a 200 carrying the id as
// the edge writes it, fail() for a network error; the `timeout` property
// ends a request on the fake clock as a browser would.
function fakeXhrClass(clock) {
  const instances = [];
  class FakeXMLHttpRequest {
    constructor() {
      this.requestHeaders = {};
      this.status = 0;
      this.responseText = '';
      this.responseHeaders = new Map();
      this.settled = false;
      this.aborted = false;
      this.timeout = 0;
      this.withCredentials = false;
      this.timer = null;
      instances.push(this);
    }

    open(method, url) {
      this.method = method;
      this.url = url;
    }

    setRequestHeader(name, value) {
      this.requestHeaders[name] = value;
    }

    send() {
      this.sentAt = clock.now();
      if (this.timeout > 0) {
        this.timer = clock.setTimeout(() => {
          this.finish(0, {}, '');
          if (this.ontimeout) {
            this.ontimeout();
          }
          this.loadend();
        }, this.timeout);
      }
    }

    getResponseHeader(name) {
      const value = this.responseHeaders.get(name.toLowerCase());
      return value === undefined ? null : value;
    }

    abort() {
      if (!this.settled) {
        this.aborted = true;
        this.finish(0, {}, '');
        this.loadend();
      }
    }

    finish(status, headers, body) {
      if (this.settled) {
        throw new Error('request already settled');
      }
      clock.clearTimeout(this.timer);
      this.settled = true;
      this.status = status;
      this.responseText = body;
      this.responseHeaders = new Map(Object.entries(headers).map(([name, value]) => [name.toLowerCase(), value]));
    }

    loadend() {
      if (this.onloadend) {
        this.onloadend();
      }
    }

    respond(status, headers = {}, body = '') {
      this.finish(status, headers, body);
      this.loadend();
    }

    // A 200 as the edge answers a poll: `id` is 'time:tag'.
    message(id, body, headers = {}) {
      const [time, tag] = id.split(':');
      const lastModified = new Date(Number(time) * 1000).toUTCString();
      this.respond(200, { 'Last-Modified': lastModified, Etag: tag, ...headers }, JSON.stringify(body));
    }

    fail() {
      this.respond(0);
    }

    query() {
      return new Map(new URL(this.url).searchParams);
    }
  }
  FakeXMLHttpRequest.instances = instances;
  FakeXMLHttpRequest.live = () => instances.filter((request) => !request.settled);
  return FakeXMLHttpRequest;
}

// Everything createClient reads from a window, on one fake clock. The page
// is at `origin`.
function fakeBrowser({ origin = 'http://site.example', random = () => 0.5, eventSource = true, webSocket = true } = {}) {
  const clock = fakeClock();
  const listeners = new Map();
  const warnings = [];
  const reported = [];
  const EventSource = fakeEventSourceClass(clock);
  const XMLHttpRequest = fakeXhrClass(clock);
  const WebSocket = fakeWebSocketClass(clock);
  const env = {
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random: () => random(),
    XMLHttpRequest,
    location: { href: origin + '/page/', origin },
    console: { warn: (message) => warnings.push(message), error: (error) => reported.push(error) },
    reportError: (error) => reported.push(error),
    addEventListener(type, fn) {
      listeners.set(type, fn);
    },
  };
  if (eventSource) {
    env.EventSource = EventSource;
  }
  if (webSocket) {
    env.WebSocket = WebSocket;
  }
  return {
    env,
    clock,
    EventSource,
    XMLHttpRequest,
    WebSocket,
    warnings,
    reported,
    streams: EventSource.instances,
    polls: XMLHttpRequest.instances,
    sockets: WebSocket.instances,
    socket: () => WebSocket.instances[WebSocket.instances.length - 1],
    stream: () => EventSource.instances[EventSource.instances.length - 1],
    poll: () => XMLHttpRequest.instances[XMLHttpRequest.instances.length - 1],
    fire: (type, event = {}) => listeners.get(type)(event),
    setRandom(fn) {
      random = fn;
    },
  };
}

// A client made by createClient on a fakeBrowser, with what its processors
// saw: record(name, type) registers one that pushes [name, data.n] to
// `seen`; waitFor(list) advances the clock until `list` (streams or polls)
// grows, and says how long that took.
function clientHarness(options = {}, browser = {}) {
  const { createClient } = require('../pushserver.js');
  const b = fakeBrowser(browser);
  const client = createClient(options, b.env);
  const seen = [];
  const record = (name, type = 'answer') => client.registerProcessor(name, type, (data) => seen.push([name, data.n]));
  const waitFor = (list) => {
    const before = list.length;
    const start = b.clock.now();
    while (list.length === before) {
      b.clock.advance(1);
      if (b.clock.now() - start > 3600000) {
        throw new Error('nothing came within an hour');
      }
    }
    return b.clock.now() - start;
  };
  return { ...b, client, seen, record, waitFor };
}

module.exports = { fakeClock, fakeEventSourceClass, fakeWebSocketClass, fakeXhrClass, fakeBrowser, clientHarness };

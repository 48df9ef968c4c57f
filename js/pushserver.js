/*
 * django-pushserver browser client, with no dependency.
 *
 *   <script src="{% static 'pushserver/pushserver.js' %}"></script>   defines window.pushserver
 *   import pushserver from '/static/pushserver/pushserver.module.js'; the same, as an ES module
 *
 *   const client = pushserver.createClient();
 *   client.registerProcessor('news', 'answer', (data) => { ... });
 *   client.onMissed('news', (name) => reloadState());
 *   client.subscribe({news: 'https://push.example.com/updates/news', me: '.../updates/user%2F42'});
 *
 * A page names its subscriptions (`news`, `me`) and gives each one channel's
 * subscriber URL. Updates are JSON objects; each goes once, in the channel's
 * order, to the processors registered for its name and its `type`.
 *
 * Transports: subscriptions of one location (same URL up to the channel id,
 * same query string) share one EventSource whose URL names all of their
 * channels (`/updates/news,user%2F42`); a change of that set opens the
 * stream again. A location whose streams keep failing in a way that says
 * "not a stream" (answered without one, no open within openTimeout, or
 * ended at once), streamFailures times in a row, is long-polled instead,
 * one poll loop per channel, and its stream is tried again after
 * streamRetry (at once when the polls' first success ends an outage: then
 * the stream was failing because the edges were away). The order of
 * options.transports is the order of preference. `websocket` (not in the
 * default list: it needs a balancer that passes upgrades) carries a
 * location's channels the same way on one WebSocket with Nchan's
 * ws+meta.nchan frames, whose ids are the stream's; it falls back by the
 * same rules, and its close codes say what next (channel deleted: stop;
 * edge stopping: again at once; slow reader: again after back-off).
 *
 * Cursors: a subscription's cursor is its channel's last message id,
 * {time, tag}, the same on every edge. It belongs to the subscription, not
 * to a connection: every transport reads it when it (re)connects (stream:
 * `last_event_id` in the query, one cursor per channel in URL order; poll:
 * If-Modified-Since + If-None-Match, or `last_event_id` for a cross-origin
 * poll, which then needs no preflight), and the one place it advances is
 * deliver(), which drops any message not newer than it. That is what keeps
 * updates exactly once across reconnects, fallbacks, a stream tried while
 * polls still run, and a fresh URL for the same channel.
 *
 * The trap: an EventSource reconnecting on its own would resend the id of
 * its last event and never back off, and its error event cannot say why it
 * failed (a 403 refusing a token looks like any other refusal). So every
 * error closes it and the client reconnects by its own back-off and cursor;
 * a refused token shows once the location is long-polled (after
 * streamFailures failures), where the 403's reason is readable, and reaches
 * onForbidden.
 *
 * `$.updates`, the jQuery API of the original django-pushserver, is built
 * at the end of this file over the same core (long-polls through $.ajax),
 * installed when jQuery is on the page; pushserver/updates.js is this file
 * under its old name.
 */
(function () {
  'use strict';

  const root = typeof window !== 'undefined' ? window : globalThis;

  // -- Vocabulary: message ids, cursors, bodies ------------------------------

  const ID = /^(\d+):(\d+)$/;
  const ETAG_IN_CACHE_CONTROL = /etag=(\S+)/;
  // What an edge's signed location answers (403, text/plain) to a URL whose
  // token does not open the channel.
  const TOKEN_REFUSAL = /^token (missing|expired|invalid)$/;
  // An event name an EventSource can be told to listen for (PROTOCOL.md).
  const EVENT_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;
  const MISSED_STREAM_EVENT = 'pushserver-missed';
  const DELETED_STREAM_EVENT = 'pushserver-deleted';
  const RESERVED_EVENTS = new Set(['open', 'error', 'message', MISSED_STREAM_EVENT, DELETED_STREAM_EVENT]);
  const EVENTSOURCE_CLOSED = 2;
  // WebSocket (README, "WebSocket"): Nchan's subprotocol, whose frames carry
  // the id, and what the edge's own frames and close codes say.
  const WS_SUBPROTOCOL = 'ws+meta.nchan';
  const WS_META = /^id: (.*)\n(content-type: (.*)\n)?\n/;
  const WS_NOTICE_TYPE = 'application/vnd.pushserver.notice+json';
  const WS_GOING_AWAY = 1001;
  const WS_TRY_AGAIN_LATER = 1013;
  const WS_CHANNEL_DELETED = 4410;

  function parseId(text) {
    const match = ID.exec(String(text).trim());
    return match ? { time: Number(match[1]), tag: Number(match[2]) } : null;
  }

  function formatId(cursor) {
    return cursor.time + ':' + cursor.tag;
  }

  function isNewer(id, cursor) {
    return !cursor || id.time > cursor.time || (id.time === cursor.time && id.tag > cursor.tag);
  }

  // A poll's validators carry the id as an HTTP date (its time) and a tag.
  function cursorFromValidators(validators) {
    const ms = Date.parse(validators.lastModified);
    const tag = /^\d+$/.test(validators.etag) ? Number(validators.etag) : NaN;
    if (!Number.isFinite(ms) || ms % 1000 !== 0 || !Number.isSafeInteger(tag)) {
      return null;
    }
    return { time: ms / 1000, tag };
  }

  function validatorsFromCursor(cursor) {
    return { lastModified: new Date(cursor.time * 1000).toUTCString(), etag: String(cursor.tag) };
  }

  // A stream event's id: `time:tag` on a one-channel stream; on a stream of
  // `count` channels every channel's cursor in URL order, `-` for none yet,
  // the event's own in brackets: `1733000000:0,[1733000005:2],-`.
  // Gives {own: index, cursor} or null.
  function parseStreamId(text, count) {
    const parts = String(text).split(',');
    if (parts.length !== count) {
      return null;
    }
    let own = -1;
    let cursor = null;
    for (let index = 0; index < count; index += 1) {
      let part = parts[index];
      const bracketed = part.length > 1 && part[0] === '[' && part[part.length - 1] === ']';
      if (bracketed) {
        part = part.slice(1, -1);
      }
      const parsed = part === '-' ? null : parseId(part);
      if (part !== '-' && !parsed) {
        return null;
      }
      if (bracketed || count === 1) {
        if (own !== -1 || !parsed) {
          return null;
        }
        own = index;
        cursor = parsed;
      }
    }
    return own === -1 ? null : { own, cursor };
  }

  function formatStreamCursor(cursors) {
    return cursors.map((cursor) => (cursor ? formatId(cursor) : '-')).join(',');
  }

  // The message id of a poll's response as {lastModified, etag}, or null when
  // the response does not carry a complete one. `getHeader` answers as
  // XMLHttpRequest.getResponseHeader does.
  function readCursor(getHeader) {
    const lastModified = getHeader('Last-Modified');
    let etag = getHeader('Etag');
    if (!etag) {
      const match = ETAG_IN_CACHE_CONTROL.exec(getHeader('Cache-Control') || '');
      etag = match ? match[1] : null;
    }
    return lastModified && etag ? { lastModified, etag } : null;
  }

  // After the n-th failure in a row: min(cap, base * 2^(n-1)) ms, times a
  // random factor in [0.5, 1), so a crowd of pages does not come back in step.
  function backoffDelay(failures, backoff, random) {
    const { base, cap } = { ...BACKOFF, ...backoff };
    const ceiling = Math.min(cap, base * 2 ** Math.max(0, failures - 1));
    return ceiling * (0.5 + random() / 2);
  }

  // An update, or a reason why the body is not one. Parsed here, so a
  // publisher's Content-Type cannot change how.
  function parseUpdate(text) {
    let data;
    try {
      data = JSON.parse(text);
    } catch (error) {
      return { reason: 'body is not JSON: ' + error.message };
    }
    if (data === null || typeof data !== 'object' || Array.isArray(data) || !('type' in data)) {
      return { reason: 'body is not a JSON object with a "type"' };
    }
    return { update: data };
  }

  // What one finished poll means:
  //   {kind: 'message', cursor, missed, update?, warning?}
  //   {kind: 'notModified', cursor}
  //   {kind: 'forbidden', reason}  the URL's token was refused
  //   {kind: 'error', reason}
  // `response` is {status, timedOut, getHeader, text}; `previous` the
  // validators the poll was sent with.
  function readResponse(response, previous) {
    const { status, getHeader, text } = response;
    if (response.timedOut) {
      // Not an error: the poll already waited the whole timeout, so asking
      // again at once cannot become a tight loop.
      return { kind: 'notModified', cursor: previous };
    }
    if (status === 200) {
      const cursor = readCursor(getHeader);
      if (!cursor) {
        // Without an id the next poll would fetch this message again, so
        // processing it would repeat it; back off and hope for a sane edge.
        return { kind: 'error', reason: '200 without Last-Modified and Etag (or Cache-Control etag=)' };
      }
      const missed = (getHeader('X-Messages-Missed') || '0') !== '0';
      const { update, reason } = parseUpdate(text);
      return update ? { kind: 'message', cursor, missed, update } : { kind: 'message', cursor, missed, warning: reason };
    }
    if (status === 304) {
      return { kind: 'notModified', cursor: readCursor(getHeader) || previous };
    }
    if (status === 403) {
      const reason = String(text || '').trim();
      if (TOKEN_REFUSAL.test(reason)) {
        return { kind: 'forbidden', reason };
      }
    }
    return { kind: 'error', reason: status ? 'HTTP ' + status : 'network error' };
  }

  // A subscriber URL in the parts the client combines: `location` (up to and
  // including the last `/` of the path), the channel's `segment` (literal
  // commas encoded: a subscription follows one channel, and a literal comma
  // would make the edge read several), `channel_id` decoded, `query` with
  // its `?`. The fragment is dropped.
  function splitUrl(url) {
    const text = String(url).split('#')[0];
    const mark = text.indexOf('?');
    const path = mark === -1 ? text : text.slice(0, mark);
    const query = mark === -1 ? '' : text.slice(mark);
    const slash = path.lastIndexOf('/');
    const location = path.slice(0, slash + 1);
    const segment = path.slice(slash + 1).replace(/,/g, '%2C');
    let channelId = segment;
    try {
      channelId = decodeURIComponent(segment);
    } catch (error) {
      // Not valid percent-encoding: the edge will say so; the text still names it here.
    }
    return { location, segment, query, channelId, path: location + segment };
  }

  function withParameter(url, parameter) {
    return url + (url.indexOf('?') === -1 ? '?' : '&') + parameter;
  }

  // -- Transports ------------------------------------------------------------
  //
  // transport.open(members, ctx) starts carrying `members` (subscriptions,
  // each with its cursor) and reports to ctx:
  //   deliver(sub, id, parsed, missed)  a message; returns whether it was new
  //   missed(sub) / deleted(sub) / forbidden(sub, reason)
  //   opened()                          it works (a stream opened, a poll answered)
  //   failed(streak)                    it failed; streak counts the failures in
  //                                     a row that say "this transport does not work here"
  //   status(subs, state, detail)       connecting / live / retrying, for the page
  // It returns {close(), listen?(type)}. A transport reports nothing once
  // closed; the core may close it from within any report, and copes with
  // reports made from within open().

  // What openStream and openWebSocket share: a location's channels on one
  // connection (`transport` names it in warnings, `what` in the open timeout),
  // its health and its back-off. dial() opens the connection; hangUp() drops
  // its handlers and closes it. The transport says when it was answered
  // (answered), when it works (opened), what arrived (deliver) and why it
  // failed (fail, retry); failures in a row reset once it has been open a while.
  function openLink(members, ctx, transport, what, dial, hangUp) {
    const { env, option } = ctx;
    const names = members.map((sub) => sub.name).join(', ');
    let timer = null;
    let healthy = null;
    let streak = 0;
    const link = {
      conn: { members, closed: false, close },
      names,
      failures: 0,
      openedAt: null,
      delivered: false,
      connect,
      answered,
      opened,
      deliver,
      atOnce,
      fail,
      retry,
      stop,
    };
    return link;

    function connect() {
      timer = null;
      link.openedAt = null;
      link.delivered = false;
      if (!dial()) {
        return;
      }
      const wait = option('openTimeout');
      timer = env.setTimeout(() => fail(`no ${what} within ${wait} ms`, true), wait);
      if (link.failures === 0) {
        ctx.status(members, 'connecting', {});
      }
    }

    function answered() {
      env.clearTimeout(timer);
      timer = null;
    }

    function opened() {
      link.openedAt = env.now();
      // Open for a while: what fails next is news, not the same failure again.
      healthy = env.setTimeout(() => {
        healthy = null;
        link.failures = 0;
        streak = 0;
      }, option('openTimeout'));
      ctx.opened();
      if (!link.conn.closed) {
        ctx.status(members, 'live', {});
      }
    }

    // `idText` is the id in the stream's form; `kind` what is skipped without one.
    function deliver(idText, data, kind) {
      const id = parseStreamId(idText, members.length);
      if (!id) {
        ctx.warn(`${names}: ${kind} skipped: id ${JSON.stringify(idText)} is not one of ${members.length} cursor(s)`);
        return;
      }
      link.delivered = true;
      link.failures = 0;
      streak = 0;
      ctx.deliver(members[id.own], id.cursor, parseUpdate(data), false);
    }

    // Ended soon after opening, having delivered nothing: as if it never opened.
    function atOnce() {
      return !link.delivered && env.now() - link.openedAt < option('openTimeout');
    }

    function fail(reason, hostile) {
      stop();
      link.failures += 1;
      if (hostile) {
        streak += 1;
      }
      ctx.failed(streak);
      if (link.conn.closed) {
        return;
      }
      const delay = backoffDelay(link.failures, option('backoff'), env.random);
      ctx.status(members, 'retrying', { reason, failures: link.failures, delay });
      ctx.warn(`${names}: ${transport}: ${reason}; connecting again in ${Math.round(delay)} ms`);
      timer = env.setTimeout(connect, delay);
    }

    // Connect again in `delay` ms, without counting a failure.
    function retry(reason, delay) {
      stop();
      ctx.status(members, 'retrying', { reason, failures: link.failures, delay });
      timer = env.setTimeout(connect, delay);
    }

    function stop() {
      env.clearTimeout(timer);
      env.clearTimeout(healthy);
      timer = null;
      healthy = null;
      hangUp();
    }

    function close() {
      link.conn.closed = true;
      stop();
    }
  }

  // The URL of `members`' channels, their cursors in `last_event_id`.
  function channelsUrl(members) {
    const url = members[0].parts.location + members.map((sub) => sub.parts.segment).join(',') + members[0].parts.query;
    const cursors = members.map((sub) => sub.cursor);
    return cursors.some(Boolean) ? withParameter(url, 'last_event_id=' + formatStreamCursor(cursors)) : url;
  }

  // The member a notice's JSON names by its channel_id, with the notice's
  // event; undefined for what is not such a notice.
  function noticeMember(members, data) {
    let parsed;
    let channelId;
    try {
      parsed = JSON.parse(data);
      channelId = parsed.channel_id;
    } catch (error) {
      return undefined;
    }
    const sub = members.find((member) => member.parts.channelId === channelId);
    return sub ? { sub, event: parsed.event } : undefined;
  }

  function openStream(members, ctx) {
    const { env, option } = ctx;
    const listened = new Set();
    let source = null;
    const link = openLink(members, ctx, 'EventSource', 'stream', dial, hangUp);
    const conn = link.conn;
    conn.listen = listen;
    link.connect();
    return conn;

    function dial() {
      listened.clear();
      try {
        source = new env.EventSource(channelsUrl(members), { withCredentials: Boolean(option('withCredentials')) });
      } catch (error) {
        source = null;
        link.fail('EventSource refused the URL: ' + error.message, true);
        return false;
      }
      source.onopen = onOpen;
      source.onerror = onError;
      source.addEventListener('message', onMessage);
      source.addEventListener(MISSED_STREAM_EVENT, (event) => forMember(event, ctx.missed));
      source.addEventListener(DELETED_STREAM_EVENT, (event) => forMember(event, ctx.deleted));
      for (const type of ctx.eventTypes()) {
        listen(type);
      }
      return true;
    }

    // Events named by their publisher reach only listeners for that name.
    function listen(type) {
      if (source && !listened.has(type) && !RESERVED_EVENTS.has(type) && EVENT_NAME.test(type)) {
        listened.add(type);
        source.addEventListener(type, onMessage);
      }
    }

    function onOpen() {
      if (conn.closed) {
        return;
      }
      link.answered();
      link.opened();
    }

    function onMessage(event) {
      if (conn.closed) {
        return;
      }
      link.deliver(event.lastEventId, event.data, 'event');
    }

    function forMember(event, report) {
      if (conn.closed) {
        return;
      }
      const found = noticeMember(members, event.data);
      if (found) {
        report(found.sub);
      }
    }

    function onError() {
      if (conn.closed) {
        return;
      }
      if (link.openedAt === null) {
        // CLOSED: answered, but not with a stream (an HTTP error, or a server
        // or proxy that does not stream). CONNECTING: no answer at all.
        const answered = source.readyState === EVENTSOURCE_CLOSED;
        link.fail(answered ? 'answered without a stream' : 'could not connect', answered);
      } else {
        link.fail('stream ended', link.atOnce());
      }
    }

    function hangUp() {
      if (source) {
        source.onopen = null;
        source.onerror = null;
        source.close();
        source = null;
      }
    }
  }

  // One WebSocket for a location's channels, as openStream's EventSource:
  // the same URL (ws: or wss:), the cursors in `last_event_id`, and
  // ws+meta.nchan, whose frames carry the id in the stream's form. A socket
  // the edge opened without that subprotocol carries no id, so no cursor
  // could advance: it counts as a failure that says "not here".
  function openWebSocket(members, ctx) {
    const { env, option } = ctx;
    let socket = null;
    const link = openLink(members, ctx, 'WebSocket', 'WebSocket', dial, hangUp);
    const conn = link.conn;
    link.connect();
    return conn;

    function dial() {
      try {
        socket = new env.WebSocket(channelsUrl(members).replace(/^http(s?):/i, 'ws$1:'), [WS_SUBPROTOCOL]);
      } catch (error) {
        socket = null;
        link.fail('WebSocket refused the URL: ' + error.message, true);
        return false;
      }
      // Read at once, as text: a Blob would need a reader and could reorder frames.
      socket.binaryType = 'arraybuffer';
      socket.onopen = onOpen;
      socket.onmessage = onMessage;
      socket.onclose = onClose;
      return true;
    }

    function onOpen() {
      if (conn.closed) {
        return;
      }
      link.answered();
      if (socket.protocol !== WS_SUBPROTOCOL) {
        link.fail(`the edge spoke no ${WS_SUBPROTOCOL}, so frames carry no id`, true);
        return;
      }
      link.opened();
    }

    function onMessage(event) {
      if (conn.closed) {
        return;
      }
      const text = typeof event.data === 'string' ? event.data : decodeUtf8(event.data);
      const meta = WS_META.exec(text);
      if (!meta) {
        ctx.warn(`${link.names}: frame skipped: no ${WS_SUBPROTOCOL} header`);
        return;
      }
      const data = text.slice(meta[0].length);
      if (meta[3] === WS_NOTICE_TYPE) {
        notice(data);
        return;
      }
      link.deliver(meta[1], data, 'frame');
    }

    function notice(data) {
      const found = noticeMember(members, data);
      if (!found) {
        return;
      }
      if (found.event === MISSED_STREAM_EVENT) {
        ctx.missed(found.sub);
      } else if (found.event === DELETED_STREAM_EVENT) {
        ctx.deleted(found.sub);
      }
    }

    function onClose(event) {
      if (conn.closed) {
        return;
      }
      const code = event.code;
      if (code === WS_CHANNEL_DELETED && members.length === 1) {
        link.stop();
        ctx.deleted(members[0]);
        return;
      }
      if (link.openedAt === null) {
        link.fail('could not connect', true);
      } else if (code === WS_GOING_AWAY && !link.atOnce()) {
        // The edge is stopping: another answers at once through the balancer.
        // Not a failure (unless it came at once, which would loop); spread over
        // up to backoff.base so its sockets do not all come back in one millisecond.
        link.retry('edge stopping', option('backoff').base * env.random());
      } else if (code === WS_TRY_AGAIN_LATER) {
        link.fail('closed as a slow reader', false);
      } else {
        link.fail(`WebSocket closed (${code})`, link.atOnce());
      }
    }

    function hangUp() {
      if (socket) {
        socket.onopen = null;
        socket.onmessage = null;
        socket.onclose = null;
        socket.close();
        socket = null;
      }
    }
  }

  function decodeUtf8(buffer) {
    return typeof TextDecoder === 'function' ? new TextDecoder().decode(buffer) : '';
  }

  function openPoll(members, ctx) {
    const { env, option } = ctx;
    const sub = members[0];
    const conn = { members, closed: false, close };
    let attempt = null;
    let timer = null;
    let failures = 0;
    let answered = false;
    poll();
    return conn;

    function poll() {
      timer = null;
      if (conn.closed) {
        return;
      }
      const sent = sub.cursor;
      let url = sub.pollUrl;
      const headers = {};
      if (sent && sub.queryCursor) {
        url = withParameter(url, 'last_event_id=' + formatId(sent));
      } else if (sent) {
        const validators = validatorsFromCursor(sent);
        headers['If-Modified-Since'] = validators.lastModified;
        headers['If-None-Match'] = validators.etag;
      }
      const startedAt = env.now();
      const current = {};
      attempt = current;
      const settings = { url, headers, timeout: option('timeout'), withCredentials: Boolean(option('withCredentials')) };
      current.request = ctx.request(settings, (response) => {
        if (attempt === current && !conn.closed) {
          attempt = null;
          settle(response, sent, startedAt);
        }
      });
      if (attempt === current && !answered && failures === 0) {
        ctx.status(members, 'connecting', {});
      }
    }

    function settle(response, sent, startedAt) {
      let outcome = readResponse(response, sent ? validatorsFromCursor(sent) : null);
      if (outcome.kind === 'forbidden') {
        ctx.forbidden(sub, outcome.reason);
        return;
      }
      if (outcome.kind === 'error' && response.status === 410 && !option('retryDeleted')) {
        ctx.deleted(sub);
        return;
      }
      let id = null;
      if (outcome.kind === 'message') {
        id = cursorFromValidators(outcome.cursor);
        if (!id) {
          outcome = { kind: 'error', reason: `200 with an id this client cannot read (${outcome.cursor.lastModified} / ${outcome.cursor.etag})` };
        } else if (!isNewer(id, sent) && sub.queryCursor) {
          // An edge that predates `last_event_id` on polls answered from the
          // start: drop the answer, and send validators from now on.
          sub.queryCursor = false;
          ctx.warn(`${sub.name}: the edge ignored last_event_id; polling with If-Modified-Since / If-None-Match`);
          poll();
          return;
        } else if (!isNewer(id, sent)) {
          outcome = { kind: 'error', reason: `200 with id ${formatId(id)}, not after the cursor ${formatId(sent)}` };
        }
      }
      if (outcome.kind === 'error') {
        failures += 1;
        ctx.failed(0);
        if (conn.closed) {
          return;
        }
        const delay = backoffDelay(failures, option('backoff'), env.random);
        ctx.status(members, 'retrying', { reason: outcome.reason, failures, delay });
        ctx.warn(`${sub.name}: ${outcome.reason}; polling again in ${Math.round(delay)} ms`);
        timer = env.setTimeout(poll, delay);
        return;
      }
      failures = 0;
      answered = true;
      ctx.opened();
      if (conn.closed) {
        return;
      }
      ctx.status(members, 'live', {});
      if (outcome.kind === 'notModified') {
        const wait = option('interval') - (env.now() - startedAt);
        if (wait > 0) {
          timer = env.setTimeout(poll, wait);
        } else {
          poll();
        }
        return;
      }
      ctx.deliver(sub, id, outcome, outcome.missed);
      // Called directly rather than through a timer: background tabs
      // throttle timers, and a backlog should drain at network speed.
      if (!conn.closed) {
        poll();
      }
    }

    function close() {
      conn.closed = true;
      env.clearTimeout(timer);
      timer = null;
      const current = attempt;
      attempt = null;
      if (current && current.request) {
        current.request.abort();
      }
    }
  }

  const TRANSPORTS = {
    eventsource: { multiChannel: true, available: (env) => typeof env.EventSource === 'function', open: openStream },
    websocket: { multiChannel: true, available: (env) => typeof env.WebSocket === 'function', open: openWebSocket },
    longpoll: { multiChannel: false, available: () => true, open: openPoll },
  };

  // ctx.request for polls: GET `settings.url` and call `done` once with
  // {status, timedOut, getHeader, text}, unless aborted first.
  function xhrRequest(env) {
    return (settings, done) => {
      const xhr = new env.XMLHttpRequest();
      let finished = false;
      let timedOut = false;
      xhr.open('GET', settings.url, true);
      for (const [name, value] of Object.entries(settings.headers)) {
        xhr.setRequestHeader(name, value);
      }
      xhr.withCredentials = settings.withCredentials;
      xhr.timeout = settings.timeout;
      xhr.ontimeout = () => {
        timedOut = true;
      };
      xhr.onloadend = () => {
        if (!finished) {
          finished = true;
          const status = timedOut ? 0 : xhr.status;
          done({ status, timedOut, getHeader: (name) => xhr.getResponseHeader(name), text: xhr.responseText });
        }
      };
      xhr.send();
      return {
        abort() {
          if (!finished) {
            finished = true;
            xhr.abort();
          }
        },
      };
    };
  }

  // -- The core: subscriptions, groups of them per location, connections -----

  const BACKOFF = Object.freeze({ base: 1000, cap: 30000 });
  const CLIENT_DEFAULTS = Object.freeze({
    transports: Object.freeze(['eventsource', 'longpoll']),
    withCredentials: false,
    backoff: BACKOFF,
    timeout: 60000,
    interval: 1000,
    openTimeout: 10000,
    streamFailures: 3,
    streamRetry: 300000,
    maxChannelsPerStream: 32,
    cursorInQuery: 'auto',
    retryDeleted: false,
    events: Object.freeze([]),
  });

  // `option(key)` is read at every use, so a page may change options at any
  // time; `request` is ctx.request for polls (XMLHttpRequest when null).
  function makeClient(env, option, request) {
    const console_ = env.console || console;
    const random = env.random || Math.random;
    const now = env.now || Date.now;
    const report = typeof env.reportError === 'function' ? (error) => env.reportError(error) : (error) => console_.error(error);
    const timers = {
      setTimeout: (fn, ms) => env.setTimeout(fn, ms),
      clearTimeout: (id) => (id === null || id === undefined ? undefined : env.clearTimeout(id)),
    };
    const transportEnv = {
      ...timers,
      now,
      random,
      get EventSource() {
        return env.EventSource;
      },
      get WebSocket() {
        return env.WebSocket;
      },
    };
    const send = request || xhrRequest(env);

    const subscriptions = new Map(); // name -> sub, refused ones included (they keep their cursor)
    const groups = new Map(); // location + query -> group
    const processors = new Map(); // name -> Map(type -> [fn])
    const callbacks = { missed: new Map(), forbidden: new Map(), deleted: new Map(), status: new Map() };
    const listeners = { missed: [], forbidden: [], deleted: [], status: [] };
    let nextId = 1;
    let suspended = false;

    function warn(message) {
      console_.warn('pushserver: ' + message);
    }

    // Page code's exceptions reach the console (and error trackers listening
    // on window) without stopping the client or the other callbacks.
    function callSafely(fn, args) {
      try {
        fn(...args);
      } catch (error) {
        report(error);
      }
    }

    function notify(kind, args) {
      for (const fn of (callbacks[kind].get(args[0]) || []).slice()) {
        callSafely(fn, args);
      }
      for (const fn of listeners[kind].slice()) {
        callSafely(fn, args);
      }
    }

    function absolute(url) {
      const here = env.location;
      if (!here || typeof URL !== 'function') {
        return String(url);
      }
      try {
        return new URL(url, here.href).href;
      } catch (error) {
        return String(url);
      }
    }

    function crossOrigin(url) {
      const here = env.location;
      if (!here || typeof URL !== 'function') {
        return false;
      }
      try {
        return new URL(url, here.href).origin !== here.origin;
      } catch (error) {
        return false;
      }
    }

    function subscribe(channels) {
      const touched = new Set();
      for (const [name, given] of Object.entries(channels)) {
        if (!given) {
          continue;
        }
        const url = absolute(given);
        // The same URL changes nothing, even when its token was refused: it
        // would only be refused again.
        const current = subscriptions.get(name);
        if (current && current.url === url) {
          continue;
        }
        const parts = splitUrl(url);
        // Another query string on the same path is the same channel (a fresh
        // token, say): it carries on, nothing missed, nothing repeated.
        const cursor = current && current.parts.path === parts.path ? current.cursor : null;
        if (current) {
          leave(current, touched);
        }
        const inQuery = option('cursorInQuery');
        const sub = {
          id: nextId++,
          name,
          url,
          parts,
          pollUrl: parts.path + parts.query,
          cursor,
          queryCursor: inQuery === 'auto' ? crossOrigin(url) : Boolean(inQuery),
          group: null,
          status: null,
        };
        subscriptions.set(name, sub);
        join(sub, touched);
      }
      touched.forEach(settleGroup);
    }

    function unsubscribe(name) {
      const sub = subscriptions.get(name);
      if (sub) {
        subscriptions.delete(name);
        const touched = new Set();
        leave(sub, touched);
        touched.forEach(settleGroup);
      }
    }

    function close() {
      for (const name of Array.from(subscriptions.keys())) {
        unsubscribe(name);
      }
    }

    function join(sub, touched) {
      const key = sub.parts.location + '\n' + sub.parts.query;
      let group = groups.get(key);
      if (!group) {
        const names = option('transports').filter((name) => TRANSPORTS[name] && TRANSPORTS[name].available(env));
        if (!names.length) {
          report(new Error(`pushserver: none of the transports ${JSON.stringify(option('transports'))} works here`));
          return;
        }
        group = {
          key,
          members: [],
          transports: names,
          mode: 0, // index of the transport carrying the group
          probing: false, // transports[0] being tried again beside it
          probeTimer: null,
          fallback: null, // {proven, outage} while the fallback has not answered yet
          connections: new Map(),
          reconciling: false,
          again: false,
        };
        groups.set(key, group);
      }
      sub.group = group;
      group.members.push(sub);
      touched.add(group);
    }

    function leave(sub, touched) {
      const group = sub.group;
      if (group) {
        sub.group = null;
        group.members = group.members.filter((member) => member !== sub);
        touched.add(group);
      }
    }

    function settleGroup(group) {
      if (group.members.length) {
        reconcile(group);
        return;
      }
      timers.clearTimeout(group.probeTimer);
      group.probeTimer = null;
      closeAll(group);
      if (groups.get(group.key) === group) {
        groups.delete(group.key);
      }
    }

    // Subscriptions in streams: each at most maxChannelsPerStream channels,
    // none twice (two names may follow one channel, each from its own cursor).
    function chunks(members) {
      const most = Math.max(1, option('maxChannelsPerStream'));
      const found = [];
      for (const sub of members) {
        const chunk = found.find(
          (candidate) => candidate.length < most && !candidate.some((other) => other.parts.channelId === sub.parts.channelId),
        );
        if (chunk) {
          chunk.push(sub);
        } else {
          found.push([sub]);
        }
      }
      return found;
    }

    // Opens what the group's members and mode call for and closes the rest;
    // a connection carrying the same subscriptions as before is kept.
    function reconcile(group) {
      if (suspended) {
        return;
      }
      if (group.reconciling) {
        group.again = true;
        return;
      }
      group.reconciling = true;
      try {
        do {
          group.again = false;
          reconcileOnce(group);
        } while (group.again);
      } finally {
        group.reconciling = false;
      }
    }

    // group.connections maps a key (transport and subscriptions) to a link:
    // {index, probe, conn}. Reports reach the core through the link, so one
    // made before open() returned, or after the probe became the group's
    // transport, is read right.
    function reconcileOnce(group) {
      const wanted = [];
      const want = (index, probe) => {
        const name = group.transports[index];
        const sets = TRANSPORTS[name].multiChannel ? chunks(group.members) : group.members.map((sub) => [sub]);
        for (const members of sets) {
          wanted.push({ key: name + ':' + members.map((sub) => sub.id).join(','), index, members, probe });
        }
      };
      want(group.mode, false);
      if (group.probing && group.mode !== 0) {
        want(0, true);
      }
      const kept = new Map();
      for (const wish of wanted) {
        const link = group.connections.get(wish.key);
        if (link) {
          link.probe = wish.probe;
          kept.set(wish.key, link);
        }
      }
      for (const [key, link] of group.connections) {
        if (!kept.has(key)) {
          closeLink(link);
        }
      }
      group.connections = kept;
      for (const wish of wanted) {
        // A report made from within open() changed the group: start over.
        if (group.again || groups.get(group.key) !== group) {
          break;
        }
        if (!kept.has(wish.key)) {
          const link = { index: wish.index, probe: wish.probe, conn: null, closed: false };
          group.connections.set(wish.key, link);
          const conn = TRANSPORTS[group.transports[wish.index]].open(wish.members, contextFor(group, link));
          link.conn = conn;
          if (link.closed) {
            conn.close();
          }
        }
      }
    }

    function closeLink(link) {
      link.closed = true;
      if (link.conn) {
        link.conn.close();
      }
    }

    function closeAll(group) {
      for (const link of group.connections.values()) {
        closeLink(link);
      }
      group.connections.clear();
    }

    function scheduleProbe(group, delay) {
      timers.clearTimeout(group.probeTimer);
      group.probeTimer = timers.setTimeout(() => {
        group.probeTimer = null;
        group.probing = true;
        reconcile(group);
      }, delay);
    }

    function contextFor(group, link) {
      const transport = group.transports[link.index];
      return {
        env: transportEnv,
        option,
        request: send,
        warn,
        eventTypes,
        deliver,
        missed: (sub) => notify('missed', [sub.name]),
        deleted: (sub) => drop(sub),
        forbidden: (sub, reason) => refuse(sub, reason),
        opened: () => opened(group, link),
        failed: (streak) => failed(group, link, streak),
        status: (subs, state, detail) => {
          if (!link.probe) {
            setStatus(subs, { state, transport, ...detail });
          }
        },
      };
    }

    function opened(group, link) {
      if (link.probe) {
        group.mode = link.index;
        group.probing = false;
        group.fallback = null;
        timers.clearTimeout(group.probeTimer);
        group.probeTimer = null;
        reconcile(group);
        return;
      }
      const fallback = group.fallback;
      if (fallback && !fallback.proven) {
        fallback.proven = true;
        if (fallback.outage) {
          // The fallback's first answer ended an outage: the streams failed
          // because nothing answered, not because they cannot work here.
          scheduleProbe(group, 0);
        }
      }
    }

    function failed(group, link, streak) {
      if (link.probe) {
        group.probing = false;
        scheduleProbe(group, option('streamRetry'));
        reconcile(group);
        return;
      }
      if (group.fallback && !group.fallback.proven) {
        group.fallback.outage = true;
      }
      const last = link.index >= group.transports.length - 1;
      if (!last && link.index === group.mode && streak >= option('streamFailures')) {
        const from = group.transports[group.mode];
        group.mode += 1;
        group.fallback = { proven: false, outage: false };
        const names = group.members.map((sub) => sub.name).join(', ');
        warn(
          `${names}: ${from} failed ${streak} times in a row; using ${group.transports[group.mode]}, ` +
            `trying ${group.transports[0]} again in ${Math.round(option('streamRetry') / 1000)} s`,
        );
        scheduleProbe(group, option('streamRetry'));
        reconcile(group);
      }
    }

    // The one place a cursor advances; anything not newer is dropped, so no
    // update is processed twice whichever connection brought it.
    function deliver(sub, id, parsed, missed) {
      if (!isNewer(id, sub.cursor)) {
        return false;
      }
      sub.cursor = id;
      if (missed) {
        notify('missed', [sub.name]);
      }
      if (parsed.update) {
        dispatch(sub.name, parsed.update);
      } else {
        warn(`${sub.name}: update skipped: ${parsed.warning || parsed.reason}`);
      }
      return true;
    }

    function dispatch(name, update) {
      const byType = processors.get(name);
      const registered = byType && byType.get(String(update.type));
      // A copy: a processor registering another must not see it called for
      // the update being dispatched.
      for (const fn of (registered || []).slice()) {
        callSafely(fn, [update]);
      }
    }

    function refuse(sub, reason) {
      // Kept under its name, out of its group, so a new URL for it keeps the cursor.
      const touched = new Set();
      leave(sub, touched);
      touched.forEach(settleGroup);
      warn(`${sub.name}: ${reason}; stopped until subscribed with a new URL`);
      setStatus([sub], { state: 'stopped', reason });
      notify('forbidden', [sub.name, reason]);
    }

    // A deleted channel's subscription ends: subscribing its URL again
    // starts over, from the oldest message the channel holds then.
    function drop(sub) {
      if (subscriptions.get(sub.name) === sub) {
        subscriptions.delete(sub.name);
      }
      const touched = new Set();
      leave(sub, touched);
      touched.forEach(settleGroup);
      warn(`${sub.name}: channel deleted; unsubscribed`);
      setStatus([sub], { state: 'stopped', reason: 'deleted' });
      notify('deleted', [sub.name]);
    }

    function setStatus(subs, status) {
      for (const sub of subs) {
        const text = JSON.stringify(status);
        if (sub.status !== text) {
          sub.status = text;
          notify('status', [sub.name, { ...status }]);
        }
      }
    }

    function eventTypes() {
      const types = new Set(option('events'));
      for (const byType of processors.values()) {
        for (const type of byType.keys()) {
          types.add(type);
        }
      }
      return types;
    }

    function registerProcessor(name, type, fn) {
      if (!processors.has(name)) {
        processors.set(name, new Map());
      }
      const byType = processors.get(name);
      const key = String(type);
      if (!byType.has(key)) {
        byType.set(key, []);
        for (const group of groups.values()) {
          for (const link of group.connections.values()) {
            if (link.conn && link.conn.listen) {
              link.conn.listen(key);
            }
          }
        }
      }
      byType.get(key).push(fn);
    }

    function addCallback(kind, name, fn) {
      if (!callbacks[kind].has(name)) {
        callbacks[kind].set(name, []);
      }
      callbacks[kind].get(name).push(fn);
    }

    function on(kind, fn) {
      if (!listeners[kind]) {
        throw new Error(`pushserver: no event ${JSON.stringify(kind)}; expected one of ${Object.keys(listeners).join(', ')}`);
      }
      listeners[kind].push(fn);
    }

    function transportOf(name) {
      const sub = subscriptions.get(name);
      return sub && sub.group ? sub.group.transports[sub.group.mode] : null;
    }

    // Connections are closed when the page is hidden for navigation, so the
    // browser does not keep them open (and the page may enter the
    // back/forward cache), and opened again with their cursors if it comes
    // back. pagehide, not beforeunload: the latter can be cancelled and
    // keeps pages out of Firefox's back/forward cache.
    if (typeof env.addEventListener === 'function') {
      env.addEventListener('pagehide', () => {
        suspended = true;
        for (const group of groups.values()) {
          timers.clearTimeout(group.probeTimer);
          group.probeTimer = null;
          closeAll(group);
        }
      });
      env.addEventListener('pageshow', () => {
        if (!suspended) {
          return;
        }
        suspended = false;
        for (const group of Array.from(groups.values())) {
          if (group.mode !== 0 && !group.probing) {
            scheduleProbe(group, option('streamRetry'));
          }
          reconcile(group);
        }
      });
    }

    return {
      subscribe,
      unsubscribe,
      close,
      registerProcessor,
      onMissed: (name, fn) => addCallback('missed', name, fn),
      onForbidden: (name, fn) => addCallback('forbidden', name, fn),
      onDeleted: (name, fn) => addCallback('deleted', name, fn),
      onStatus: (name, fn) => addCallback('status', name, fn),
      on,
      transportOf,
    };
  }

  function browserEnv() {
    return {
      setTimeout: (fn, ms) => root.setTimeout(fn, ms),
      clearTimeout: (id) => root.clearTimeout(id),
      console: root.console,
      reportError: typeof root.reportError === 'function' ? (error) => root.reportError(error) : undefined,
      addEventListener: typeof root.addEventListener === 'function' ? (type, fn) => root.addEventListener(type, fn) : undefined,
      document: root.document,
      get EventSource() {
        return root.EventSource;
      },
      get WebSocket() {
        return root.WebSocket;
      },
      get XMLHttpRequest() {
        return root.XMLHttpRequest;
      },
      get location() {
        return root.location;
      },
    };
  }

  /**
   * A client with its own subscriptions. `options` (all optional; kept as
   * `client.options` and read at every use):
   *   transports: ['eventsource', 'longpoll'], withCredentials: false,
   *   backoff: {base: 1000, cap: 30000}, timeout: 60000, interval: 1000,
   *   openTimeout: 10000, streamFailures: 3, streamRetry: 300000,
   *   maxChannelsPerStream: 32, cursorInQuery: 'auto', events: []
   * `env` is for tests: timers, now, random, EventSource, XMLHttpRequest,
   * location, addEventListener, console, reportError; the window otherwise.
   *
   *   const client = pushserver.createClient({withCredentials: true});
   *   client.subscribe({news: newsUrl});
   */
  function createClient(options, env) {
    const given = options || {};
    const settings = { ...CLIENT_DEFAULTS, ...given, backoff: { ...BACKOFF, ...given.backoff } };
    const option = (key) => (settings[key] === undefined ? CLIENT_DEFAULTS[key] : settings[key]);
    const client = makeClient(env || browserEnv(), option, null);
    client.options = settings;
    return client;
  }

  // -- $.updates: the original jQuery API over the same core ------------------

  const DEFAULTS = Object.freeze({
    backoff: BACKOFF,
    timeout: 60000,
    interval: 1000,
    withCredentials: true,
  });
  // What $.updates always was: one loop of long-polls per name, through
  // $.ajax, validators as the cursor, a 410 retried like any error (the
  // channel may be created again).
  const JQUERY_FIXED = Object.freeze({ transports: Object.freeze(['longpoll']), cursorInQuery: false, retryDeleted: true });
  const MISSED_EVENT = 'updates:missed';
  const FORBIDDEN_EVENT = 'updates:forbidden';

  function ajaxRequest($) {
    return (settings, done) => {
      let aborted = false;
      // cache: true because cache: false adds a query string; validators, not
      // URLs, keep caches out of the way. dataType 'text': parsed by the core.
      // No other headers: the edge's CORS preflight allows just these.
      // global: false keeps polls that never end from firing the page's
      // ajaxStart/ajaxStop spinners and ajaxError handlers.
      const request = $.ajax({
        url: settings.url,
        type: 'GET',
        dataType: 'text',
        cache: true,
        global: false,
        headers: settings.headers,
        timeout: settings.timeout,
        xhrFields: { withCredentials: settings.withCredentials },
      });
      request.always(() => {
        if (!aborted) {
          done({
            status: request.status,
            // jQuery's name for an abort by its own `timeout` setting.
            timedOut: request.statusText === 'timeout',
            getHeader: (name) => request.getResponseHeader(name),
            text: request.responseText,
          });
        }
      });
      return {
        abort() {
          aborted = true;
          request.abort();
        },
      };
    };
  }

  // Builds $.updates; `env` as for createClient plus `document`, the target
  // of the jQuery events.
  function createUpdates($, env) {
    const api = { options: { ...DEFAULTS, backoff: { ...DEFAULTS.backoff } } };
    const option = (key) => {
      if (key in DEFAULTS) {
        const value = api.options[key];
        return value === undefined ? DEFAULTS[key] : value;
      }
      return key in JQUERY_FIXED ? JQUERY_FIXED[key] : CLIENT_DEFAULTS[key];
    };
    const core = makeClient(env, option, ajaxRequest($));
    core.on('missed', (...args) => $(env.document).trigger(MISSED_EVENT, args));
    core.on('forbidden', (...args) => $(env.document).trigger(FORBIDDEN_EVENT, args));
    api.subscribe = core.subscribe;
    api.unsubscribe = core.unsubscribe;
    api.registerProcessor = core.registerProcessor;
    api.onMissed = core.onMissed;
    api.onForbidden = core.onForbidden;
    return api;
  }

  const exported = {
    createClient,
    createUpdates,
    readCursor,
    readResponse,
    parseUpdate,
    backoffDelay,
    parseId,
    formatId,
    parseStreamId,
    formatStreamCursor,
    cursorFromValidators,
    validatorsFromCursor,
    splitUrl,
    TRANSPORTS,
    CLIENT_DEFAULTS,
    DEFAULTS,
    MISSED_EVENT,
    FORBIDDEN_EVENT,
  };

  // Loaded twice (two templates including it, or the script and the ES
  // module both): keep the first, which may already hold subscriptions.
  if (!root.pushserver) {
    root.pushserver = exported;
  }
  if (typeof module !== 'undefined' && module.exports) {
    module.exports = exported;
  }
  const jQuery = root.jQuery;
  if (jQuery && !jQuery.updates) {
    jQuery.updates = createUpdates(jQuery, browserEnv());
  } else if (!jQuery && typeof module === 'undefined') {
    const script = root.document && root.document.currentScript;
    if (script && /\/updates\.js(\?|$)/.test(script.src || '')) {
      console.error('pushserver/updates.js: $.updates needs jQuery loaded before it (pushserver.createClient does not)');
    }
  }
})();

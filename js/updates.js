/*
 * django-pushserver browser client: $.updates (requires jQuery).
 *
 * Each subscribed channel is walked by one loop of long-polls, as the Basic
 * HTTP Push Relay Protocol asks:
 *   1. GET the subscriber URL with no validators: the edge answers with the
 *      oldest message it holds, or holds the request until one arrives.
 *   2. A 200 carries one message and its id as Last-Modified + Etag. Send
 *      them back as If-Modified-Since + If-None-Match to get the next one.
 *      Where the Etag header is not readable, the tag is the `etag=` of
 *      Cache-Control (always readable, also across origins).
 *   3. A 304 means nothing arrived before the edge's long-poll timeout: ask
 *      again with the same validators. So does a poll that got no answer
 *      within options.timeout (a connection that died without a word).
 *   4. X-Messages-Missed on a 200: the edge no longer holds what followed
 *      the cursor; the page is told (onMissed callbacks and the jQuery event
 *      'updates:missed' on document) so it can reload its state.
 *   5. A 403 saying "token missing", "token expired" or "token invalid": the
 *      location is signed and this URL's token does not open the channel,
 *      now or ever. The loop stops and the page is told (onForbidden
 *      callbacks and the jQuery event 'updates:forbidden' on document), so
 *      it can fetch a fresh URL and subscribe the name with it; a URL that
 *      differs only in its query string carries on from the cursor.
 * Anything else (network error, 4xx, 5xx, a 200 without an id) backs off
 * with jitter before the next poll, so a dead edge is never hammered. Every
 * edge serves the same id for the same message, so a cursor stays valid
 * when a load balancer sends the next poll to another edge.
 *
 * Usage (load jQuery first):
 *   $.updates.subscribe({main_channel: 'https://push.example.com/updates/some_channel_id'});
 *   $.updates.registerProcessor('main_channel', 'answer', function (data) { ... });
 *   $.updates.onMissed('main_channel', function (name) { reloadState(); });
 *   $(document).on('updates:missed', function (event, name) { ... });
 *   $.updates.onForbidden('main_channel', function (name, reason) {
 *     $.get('/fresh-channel-url/').then((url) => $.updates.subscribe({[name]: url}));
 *   });
 *   $.updates.unsubscribe('main_channel');
 * Updates are JSON objects; each goes to the processors registered for its
 * channel name and its `type`, in registration order. Missed-message
 * callbacks run before the update that came with the news. An exception in
 * page code is reported (reportError, else console.error) and skipped.
 *
 * Options ($.updates.options, read at every poll):
 *   backoff: {base: 1000, cap: 30000}  after the n-th failure in a row, wait
 *       min(cap, base * 2^(n-1)) ms, times a random factor in [0.5, 1)
 *   timeout: 60000  ms without an answer before a poll is abandoned and
 *       asked again (a connection that died silently, a stuck proxy); keep
 *       it above the edge's long_poll_timeout (25 s by default)
 *   interval: 1000  least ms between the starts of a poll ending in 304 (or
 *       the timeout) and the next one, so an interval-polling location is
 *       not polled in a loop
 *   withCredentials: true  send cookies cross-origin; the subscriber
 *       location then needs allow_credentials and the page's origin allowed,
 *       as browsers refuse credentialed responses to "*"
 *
 * Other 403s and 410 are retried with back-off like other errors: a refusal
 * may be lifted (a login, a grant expiring) and a deleted channel may be
 * created again, and the back-off keeps the cost of waiting for that small.
 * A refused token is not retried: the same URL carries the same token.
 */
(function () {
  'use strict';

  const DEFAULTS = Object.freeze({
    backoff: Object.freeze({ base: 1000, cap: 30000 }),
    timeout: 60000,
    interval: 1000,
    withCredentials: true,
  });

  const MISSED_EVENT = 'updates:missed';
  const FORBIDDEN_EVENT = 'updates:forbidden';
  // What an edge's signed location answers (403, text/plain) to a URL whose
  // token does not open the channel.
  const TOKEN_REFUSAL = /^token (missing|expired|invalid)$/;
  const ETAG_IN_CACHE_CONTROL = /etag=(\S+)/;

  // The message id of a response as {lastModified, etag}, or null when the
  // response does not carry a complete one. `getHeader` is
  // jqXHR.getResponseHeader or anything answering the same way.
  function readCursor(getHeader) {
    const lastModified = getHeader('Last-Modified');
    let etag = getHeader('Etag');
    if (!etag) {
      const match = ETAG_IN_CACHE_CONTROL.exec(getHeader('Cache-Control') || '');
      etag = match ? match[1] : null;
    }
    return lastModified && etag ? { lastModified, etag } : null;
  }

  function backoffDelay(failures, backoff, random) {
    const { base, cap } = { ...DEFAULTS.backoff, ...backoff };
    const ceiling = Math.min(cap, base * 2 ** Math.max(0, failures - 1));
    return ceiling * (0.5 + random() / 2);
  }

  // An update, or a reason why the body is not one. Bodies are parsed here
  // rather than by jQuery so a publisher's Content-Type cannot change how.
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

  // What one finished poll means for its loop:
  //   {kind: 'message', cursor, missed, update?, warning?}
  //   {kind: 'notModified', cursor}
  //   {kind: 'forbidden', reason}  the URL's token was refused
  //   {kind: 'error', reason}
  // `response` is {status, timedOut, getHeader, text}; `previous` the cursor
  // the poll was sent with.
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

  // Builds $.updates. `env` is the window in a browser; tests pass their own
  // setTimeout/clearTimeout, now, random, console, reportError, document and
  // addEventListener, so no test needs a browser, jQuery or a network.
  function createUpdates($, env) {
    const console_ = env.console || console;
    const random = env.random || Math.random;
    const now = env.now || Date.now;
    const report = typeof env.reportError === 'function'
      ? (error) => env.reportError(error)
      : (error) => console_.error(error);

    const loops = new Map(); // name -> loop
    const processors = new Map(); // name -> Map(type -> [fn])
    const missedCallbacks = new Map(); // name -> [fn]
    const forbiddenCallbacks = new Map(); // name -> [fn]
    let suspended = false;

    const api = {
      options: { ...DEFAULTS, backoff: { ...DEFAULTS.backoff } },
      subscribe,
      unsubscribe,
      registerProcessor,
      onMissed,
      onForbidden,
    };

    function option(key) {
      const value = api.options[key];
      return value === undefined ? DEFAULTS[key] : value;
    }

    // Calls page code so that its exceptions reach the console (and error
    // trackers listening on window) without ending the loop or the others.
    function callSafely(fn, args) {
      try {
        fn(...args);
      } catch (error) {
        report(error);
      }
    }

    function subscribe(channels) {
      for (const [name, url] of Object.entries(channels)) {
        if (!url) {
          continue;
        }
        // The same URL changes nothing, even when its token was refused: it
        // would only be refused again.
        const current = loops.get(name);
        if (current && current.url === url) {
          continue;
        }
        if (current) {
          stop(current);
        }
        // Another query string on the same path is the same channel (a fresh
        // token, say): the walk carries on, nothing missed, nothing repeated.
        const cursor = current && withoutQuery(current.url) === withoutQuery(url) ? current.cursor : null;
        const loop = { name, url, cursor, failures: 0, request: null, timer: null, stopped: false };
        loops.set(name, loop);
        poll(loop);
      }
    }

    function unsubscribe(name) {
      const loop = loops.get(name);
      if (loop) {
        stop(loop);
      }
    }

    function registerProcessor(name, type, fn) {
      if (!processors.has(name)) {
        processors.set(name, new Map());
      }
      const byType = processors.get(name);
      const key = String(type);
      if (!byType.has(key)) {
        byType.set(key, []);
      }
      byType.get(key).push(fn);
    }

    function onMissed(name, fn) {
      addCallback(missedCallbacks, name, fn);
    }

    function onForbidden(name, fn) {
      addCallback(forbiddenCallbacks, name, fn);
    }

    function addCallback(callbacks, name, fn) {
      if (!callbacks.has(name)) {
        callbacks.set(name, []);
      }
      callbacks.get(name).push(fn);
    }

    function withoutQuery(url) {
      return String(url).split('#')[0].split('?')[0];
    }

    function stop(loop) {
      loop.stopped = true;
      halt(loop);
      if (loops.get(loop.name) === loop) {
        loops.delete(loop.name);
      }
    }

    // Ends what a loop has in flight or scheduled; its cursor is kept.
    function halt(loop) {
      if (loop.timer !== null) {
        env.clearTimeout(loop.timer);
        loop.timer = null;
      }
      const request = loop.request;
      if (request) {
        // Cleared first: abort() settles the request at once, and settle()
        // must see it is no longer the loop's.
        loop.request = null;
        request.abort();
      }
    }

    function schedule(loop, delay) {
      loop.timer = env.setTimeout(() => {
        loop.timer = null;
        poll(loop);
      }, delay);
    }

    function poll(loop) {
      if (loop.stopped || suspended) {
        return;
      }
      const headers = {};
      if (loop.cursor) {
        headers['If-Modified-Since'] = loop.cursor.lastModified;
        headers['If-None-Match'] = loop.cursor.etag;
      }
      const startedAt = now();
      // cache: true because cache: false adds a query string; validators, not
      // URLs, keep caches out of the way. dataType 'text': parsed in settle().
      // No other headers: the edge's CORS preflight allows just these.
      // global: false keeps polls that never end from firing the page's
      // ajaxStart/ajaxStop spinners and ajaxError handlers.
      const request = $.ajax({
        url: loop.url,
        type: 'GET',
        dataType: 'text',
        cache: true,
        global: false,
        headers,
        timeout: option('timeout'),
        xhrFields: { withCredentials: option('withCredentials') },
      });
      loop.request = request;
      request.always(() => settle(loop, request, startedAt));
    }

    function settle(loop, request, startedAt) {
      if (loop.stopped || loop.request !== request) {
        return; // aborted by unsubscribe, a new URL or the page going away
      }
      loop.request = null;
      const outcome = readResponse(
        {
          status: request.status,
          // jQuery's name for an abort by its own `timeout` setting.
          timedOut: request.statusText === 'timeout',
          getHeader: (header) => request.getResponseHeader(header),
          text: request.responseText,
        },
        loop.cursor,
      );
      if (outcome.kind === 'forbidden') {
        // Kept under its name, stopped, so a new URL for it keeps the cursor.
        loop.stopped = true;
        console_.warn(`updates: ${loop.name}: ${outcome.reason}; stopped until subscribed with a new URL`);
        notify(forbiddenCallbacks, FORBIDDEN_EVENT, [loop.name, outcome.reason]);
        return;
      }
      if (outcome.kind === 'error') {
        loop.failures += 1;
        const delay = backoffDelay(loop.failures, option('backoff'), random);
        console_.warn(`updates: ${loop.name}: ${outcome.reason}; polling again in ${Math.round(delay)} ms`);
        schedule(loop, delay);
        return;
      }
      loop.failures = 0;
      loop.cursor = outcome.cursor;
      if (outcome.kind === 'notModified') {
        const wait = option('interval') - (now() - startedAt);
        if (wait > 0) {
          schedule(loop, wait);
        } else {
          poll(loop);
        }
        return;
      }
      if (outcome.missed) {
        notify(missedCallbacks, MISSED_EVENT, [loop.name]);
      }
      if (outcome.update) {
        dispatch(loop.name, outcome.update);
      } else {
        console_.warn(`updates: ${loop.name}: update skipped: ${outcome.warning}`);
      }
      // Called directly rather than through a timer: background tabs
      // throttle timers, and a backlog should drain at network speed.
      poll(loop);
    }

    // args[0] is the name; callbacks get every arg, and so does the event.
    function notify(callbacks, event, args) {
      for (const fn of (callbacks.get(args[0]) || []).slice()) {
        callSafely(fn, args);
      }
      callSafely(() => $(env.document).trigger(event, args), []);
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

    // Polls are aborted when the page is hidden for navigation, so the
    // browser does not keep their connections open, and resumed with their
    // cursors if the page comes back from the back/forward cache.
    // pagehide, not beforeunload: the latter can be cancelled and keeps
    // pages out of Firefox's back/forward cache.
    if (typeof env.addEventListener === 'function') {
      env.addEventListener('pagehide', () => {
        suspended = true;
        for (const loop of loops.values()) {
          halt(loop);
        }
      });
      env.addEventListener('pageshow', (event) => {
        if (!suspended) {
          return;
        }
        suspended = false;
        for (const loop of loops.values()) {
          if (!loop.request && loop.timer === null) {
            poll(loop);
          }
        }
      });
    }

    return api;
  }

  if (typeof module !== 'undefined' && module.exports) {
    module.exports = {
      createUpdates,
      readCursor,
      readResponse,
      parseUpdate,
      backoffDelay,
      DEFAULTS,
      MISSED_EVENT,
      FORBIDDEN_EVENT,
    };
  } else if (typeof window !== 'undefined' && window.jQuery) {
    // Loaded twice (two templates including it): keep the first, which may
    // already hold subscriptions and processors.
    if (!window.jQuery.updates) {
      window.jQuery.updates = createUpdates(window.jQuery, window);
    }
  } else if (typeof console !== 'undefined') {
    console.error('pushserver/updates.js needs jQuery loaded before it');
  }
})();

'use strict';

// The polling loop of $.updates, driven by a fake clock and a fake $.ajax
// whose requests the tests answer by hand. No network, no jQuery.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');

const { createUpdates, MISSED_EVENT, FORBIDDEN_EVENT } = require('../pushserver.js');
const { fakeClock } = require('../testing/fakes.js');

const T0 = 'Thu, 28 Nov 2024 00:00:00 GMT';
const T1 = 'Thu, 28 Nov 2024 00:00:01 GMT';

// The part of jqXHR the client uses: always(), abort(), status, statusText,
// responseText, getResponseHeader(). Like jQuery, abort() settles at once
// with status 0, the `timeout` setting aborts with statusText 'timeout',
// and callbacks added after settling run at once.
function fakeRequest(settings, clock) {
  const callbacks = [];
  let responseHeaders = new Map();
  const request = {
    settings,
    sentAt: clock.now(),
    settled: false,
    aborted: false,
    status: 0,
    statusText: undefined,
    responseText: undefined,
    always(fn) {
      if (request.settled) {
        fn();
      } else {
        callbacks.push(fn);
      }
      return request;
    },
    getResponseHeader(name) {
      const value = responseHeaders.get(name.toLowerCase());
      return value === undefined ? null : value;
    },
    abort(statusText) {
      if (!request.settled) {
        request.aborted = true;
        settle(0, {}, undefined, statusText || 'canceled');
      }
    },
    respond(status, headers = {}, body = '') {
      assert.ok(!request.settled, 'request already settled');
      settle(status, headers, body, status ? 'status ' + status : 'error');
    },
    message(lastModified, etag, body, extra = {}) {
      request.respond(200, { 'Last-Modified': lastModified, Etag: etag, ...extra }, JSON.stringify(body));
    },
  };
  const timer = settings.timeout > 0 ? clock.setTimeout(() => request.abort('timeout'), settings.timeout) : null;
  function settle(status, headers, body, statusText) {
    clock.clearTimeout(timer);
    request.settled = true;
    request.status = status;
    request.statusText = statusText;
    request.responseText = body;
    responseHeaders = new Map(Object.entries(headers).map(([name, value]) => [name.toLowerCase(), value]));
    for (const fn of callbacks.splice(0)) {
      fn();
    }
  }
  return request;
}

function harness({ random = () => 0.5 } = {}) {
  const clock = fakeClock();
  const requests = [];
  const triggered = [];
  const reported = [];
  const warnings = [];
  const listeners = new Map();
  const document = { name: 'document' };
  const $ = (target) => ({
    trigger(type, args) {
      triggered.push({ target, type, args });
    },
  });
  $.ajax = (settings) => {
    const request = fakeRequest(settings, clock);
    requests.push(request);
    return request;
  };
  const env = {
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random: () => random(),
    document,
    console: { warn: (message) => warnings.push(message), error: (error) => reported.push(error) },
    reportError: (error) => reported.push(error),
    addEventListener(type, fn) {
      listeners.set(type, fn);
    },
  };
  const updates = createUpdates($, env);
  return {
    updates,
    clock,
    requests,
    triggered,
    reported,
    warnings,
    document,
    last: () => requests[requests.length - 1],
    fire: (type, event = {}) => listeners.get(type)(event),
    setRandom(fn) {
      random = fn;
    },
  };
}

test('the first poll has no validators and asks with credentials, no cache-busting, no global ajax events and the timeout', () => {
  const h = harness();
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  assert.equal(h.requests.length, 1);
  const { settings } = h.last();
  assert.equal(settings.url, 'http://edge/updates/a');
  assert.equal(settings.type, 'GET');
  assert.equal(settings.dataType, 'text');
  assert.equal(settings.cache, true);
  assert.equal(settings.global, false);
  assert.deepEqual(settings.headers, {});
  assert.deepEqual(settings.xhrFields, { withCredentials: true });
  assert.equal(settings.timeout, 60000);
});

test('the cursor advances from Last-Modified and Etag, and the next poll goes at once', () => {
  const h = harness();
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.last().message(T0, '0', { type: 'answer' });
  assert.equal(h.requests.length, 2);
  assert.deepEqual(h.last().settings.headers, { 'If-Modified-Since': T0, 'If-None-Match': '0' });
  h.last().message(T1, '5', { type: 'answer' });
  assert.deepEqual(h.last().settings.headers, { 'If-Modified-Since': T1, 'If-None-Match': '5' });
  assert.equal(h.clock.now(), 0);
});

test('the tag is read from Cache-Control when Etag is not readable', () => {
  const h = harness();
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.last().respond(200, { 'Last-Modified': T0, 'Cache-Control': 'no-cache, etag=3' }, '{"type": "x"}');
  assert.deepEqual(h.last().settings.headers, { 'If-Modified-Since': T0, 'If-None-Match': '3' });
});

test('a 304 after a long-poll re-polls at once keeping the cursor', () => {
  const h = harness();
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.clock.advance(25000);
  h.last().respond(304);
  assert.equal(h.requests.length, 2);
  assert.deepEqual(h.last().settings.headers, {});
  h.last().message(T0, '1', { type: 'x' });
  h.clock.advance(25000);
  h.last().respond(304, { 'Last-Modified': T0, Etag: '1' });
  h.clock.advance(25000);
  h.last().respond(304);
  assert.equal(h.requests.length, 5);
  assert.deepEqual(h.last().settings.headers, { 'If-Modified-Since': T0, 'If-None-Match': '1' });
});

test('a quick 304 (interval-polling location) waits out the interval before the next poll', () => {
  const h = harness();
  h.updates.options.interval = 2000;
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.clock.advance(300);
  h.last().respond(304);
  assert.equal(h.requests.length, 1);
  h.clock.advance(1699);
  assert.equal(h.requests.length, 1);
  h.clock.advance(1);
  assert.equal(h.requests.length, 2);
  assert.equal(h.last().sentAt, 2000);
});

test('processors are called once per update, in order of arrival and registration, only for their type', () => {
  const h = harness();
  const seen = [];
  h.updates.registerProcessor('main', 'answer', (data) => seen.push(['first', data.value]));
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.updates.registerProcessor('main', 'answer', (data) => seen.push(['second', data.value]));
  h.updates.registerProcessor('main', 'other', (data) => seen.push(['other', data.value]));
  h.updates.registerProcessor('elsewhere', 'answer', (data) => seen.push(['elsewhere', data.value]));
  for (let i = 0; i < 3; i += 1) {
    h.last().message(T0, String(i), { type: 'answer', value: i });
  }
  h.last().message(T0, '3', { type: 'unregistered', value: 3 });
  h.last().message(T0, '4', { type: 'other', value: 4 });
  assert.deepEqual(seen, [
    ['first', 0],
    ['second', 0],
    ['first', 1],
    ['second', 1],
    ['first', 2],
    ['second', 2],
    ['other', 4],
  ]);
  assert.equal(h.requests.length, 6);
});

test('a body that is not JSON or lacks a type is skipped with a warning and the cursor advances', () => {
  const h = harness();
  const seen = [];
  h.updates.registerProcessor('main', 'answer', (data) => seen.push(data.value));
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.last().respond(200, { 'Last-Modified': T0, Etag: '0' }, 'not json');
  h.last().respond(200, { 'Last-Modified': T0, Etag: '1' }, '{"value": 1}');
  h.last().message(T0, '2', { type: 'answer', value: 2 });
  assert.deepEqual(seen, [2]);
  assert.equal(h.warnings.length, 2);
  assert.deepEqual(h.last().settings.headers, { 'If-Modified-Since': T0, 'If-None-Match': '2' });
});

test('a throwing processor does not stop the others or the loop, and its error is reported', () => {
  const h = harness();
  const seen = [];
  const boom = new Error('processor bug');
  h.updates.registerProcessor('main', 'answer', () => {
    throw boom;
  });
  h.updates.registerProcessor('main', 'answer', (data) => seen.push(data.value));
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.last().message(T0, '0', { type: 'answer', value: 1 });
  h.last().message(T0, '1', { type: 'answer', value: 2 });
  assert.deepEqual(seen, [1, 2]);
  assert.deepEqual(h.reported, [boom, boom]);
  assert.equal(h.requests.length, 3);
  assert.equal(h.last().settled, false);
});

test('X-Messages-Missed calls onMissed callbacks and triggers the jQuery event before the update is processed', () => {
  const h = harness();
  const order = [];
  h.updates.onMissed('main', (name) => order.push(['missed', name, h.triggered.length]));
  h.updates.registerProcessor('main', 'answer', () => order.push(['processed', h.triggered.length]));
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.last().message(T0, '0', { type: 'answer' });
  assert.deepEqual(h.triggered, []);
  h.last().message(T1, '0', { type: 'answer' }, { 'X-Messages-Missed': '1' });
  assert.deepEqual(order, [['processed', 0], ['missed', 'main', 0], ['processed', 1]]);
  assert.deepEqual(h.triggered, [{ target: h.document, type: MISSED_EVENT, args: ['main'] }]);
  assert.equal(MISSED_EVENT, 'updates:missed');
  assert.equal(h.last().settled, false, 'the loop goes on');
});

test('a throwing onMissed callback does not stop the event, the update or the loop', () => {
  const h = harness();
  const seen = [];
  h.updates.onMissed('main', () => {
    throw new Error('reload failed');
  });
  h.updates.registerProcessor('main', 'answer', (data) => seen.push(data.value));
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.last().message(T0, '0', { type: 'answer', value: 7 }, { 'X-Messages-Missed': '1' });
  assert.equal(h.reported.length, 1);
  assert.equal(h.triggered.length, 1);
  assert.deepEqual(seen, [7]);
  assert.equal(h.requests.length, 2);
});

test('back-off doubles per failure, is capped, and resets after a success', () => {
  const h = harness({ random: () => 0 }); // the shortest jitter: half the ceiling
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  const gaps = [];
  for (let i = 0; i < 8; i += 1) {
    const before = h.requests.length;
    h.last().respond(503, {}, 'broker unavailable');
    const start = h.clock.now();
    while (h.requests.length === before) {
      h.clock.advance(1);
    }
    gaps.push(h.clock.now() - start);
  }
  assert.deepEqual(gaps, [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
  h.last().message(T0, '0', { type: 'x' });
  h.last().respond(0);
  const start = h.clock.now();
  h.clock.advance(499);
  assert.equal(h.last().settled, true);
  h.clock.advance(1);
  assert.equal(h.last().settled, false);
  assert.equal(h.clock.now() - start, 500);
});

test('back-off jitter keeps each delay between half and all of its ceiling', () => {
  for (const r of [0, 0.25, 0.999999]) {
    const h = harness({ random: () => r });
    h.updates.subscribe({ main: 'http://edge/updates/a' });
    h.last().respond(500);
    const expected = 1000 * (0.5 + r / 2);
    h.clock.advance(expected - 1);
    assert.equal(h.requests.length, 1, `random ${r}`);
    h.clock.advance(1);
    assert.equal(h.requests.length, 2, `random ${r}`);
  }
});

test('back-off settings come from $.updates.options.backoff at each failure', () => {
  const h = harness({ random: () => 0 });
  h.updates.options.backoff = { base: 100, cap: 300 };
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  const starts = [];
  for (let i = 0; i < 4; i += 1) {
    h.last().respond(502);
    h.clock.advance(1000);
    starts.push(h.last().sentAt);
  }
  assert.deepEqual(starts, [50, 1100, 2150, 3150]);
});

test('a 403 without a token refusal, 410, 400 and network errors back off like other errors', () => {
  for (const status of [403, 410, 400, 0]) {
    const h = harness({ random: () => 0 });
    h.updates.subscribe({ main: 'http://edge/updates/a' });
    h.last().respond(status);
    assert.equal(h.requests.length, 1, String(status));
    h.clock.advance(500);
    assert.equal(h.requests.length, 2, String(status));
  }
});

test('a 403 refusing the token stops the loop and tells the page once, by callback and event', () => {
  for (const reason of ['token expired', 'token invalid', 'token missing']) {
    const h = harness();
    const told = [];
    h.updates.onForbidden('main', (...args) => told.push(args));
    h.updates.onForbidden('other', () => told.push(['wrong name']));
    h.updates.subscribe({ main: 'http://edge/updates/a?token=1.x' });
    h.last().message(T0, '0', { type: 'x' });
    h.last().respond(403, { 'Content-Type': 'text/plain; charset=utf-8' }, reason + '\n');
    assert.deepEqual(told, [['main', reason]]);
    assert.deepEqual(h.triggered, [{ target: h.document, type: FORBIDDEN_EVENT, args: ['main', reason] }]);
    assert.equal(FORBIDDEN_EVENT, 'updates:forbidden');
    h.clock.advance(600000);
    assert.equal(h.requests.length, 2, 'no poll after the refusal: the same URL would be refused again');
    assert.equal(h.clock.pending(), 0);
    assert.equal(h.warnings.length, 1);
    assert.match(h.warnings[0], new RegExp(`main: ${reason}; stopped`));
  }
});

test('other 403s are not a refused token: they back off and poll again', () => {
  for (const body of ['subscription refused\n', 'channel does not exist\n', 'token', 'my token expired']) {
    const h = harness({ random: () => 0 });
    const told = [];
    h.updates.onForbidden('main', (...args) => told.push(args));
    h.updates.subscribe({ main: 'http://edge/updates/a' });
    h.last().respond(403, {}, body);
    h.clock.advance(500);
    assert.equal(h.requests.length, 2, body);
    assert.deepEqual(told, [], body);
  }
});

test('a fresh URL for the refused name carries on from its cursor, other names polling throughout', () => {
  const h = harness();
  const seen = [];
  h.updates.registerProcessor('main', 'answer', (data) => seen.push(data.value));
  h.updates.onForbidden('main', (name) => h.updates.subscribe({ [name]: 'http://edge/updates/a?token=2.y' }));
  h.updates.subscribe({ main: 'http://edge/updates/a?token=1.x', other: 'http://edge/updates/b' });
  const main = h.requests[0];
  const other = h.requests[1];
  main.message(T0, '4', { type: 'answer', value: 1 });
  h.last().respond(403, {}, 'token expired\n');
  const fresh = h.last();
  assert.equal(fresh.settings.url, 'http://edge/updates/a?token=2.y');
  assert.deepEqual(fresh.settings.headers, { 'If-Modified-Since': T0, 'If-None-Match': '4' });
  assert.equal(other.settled, false, 'the other name was not disturbed');
  fresh.message(T1, '0', { type: 'answer', value: 2 });
  assert.deepEqual(seen, [1, 2]);
});

test('after a refusal the same URL again changes nothing, and another path starts from the start', () => {
  const h = harness();
  h.updates.subscribe({ main: 'http://edge/updates/a?token=1.x' });
  h.last().message(T0, '4', { type: 'x' });
  h.last().respond(403, {}, 'token invalid');
  h.updates.subscribe({ main: 'http://edge/updates/a?token=1.x' });
  assert.equal(h.requests.length, 2);
  h.updates.subscribe({ main: 'http://edge/updates/c?token=3.z' });
  assert.equal(h.requests.length, 3);
  assert.deepEqual(h.last().settings.headers, {});
});

test('a running subscription given a fresh token keeps its cursor; unsubscribing forgets it', () => {
  const h = harness();
  h.updates.subscribe({ main: 'http://edge/updates/a?token=1.x' });
  h.last().message(T0, '4', { type: 'x' });
  const held = h.last();
  h.updates.subscribe({ main: 'http://edge/updates/a?token=2.y' });
  assert.equal(held.aborted, true);
  assert.deepEqual(h.last().settings.headers, { 'If-Modified-Since': T0, 'If-None-Match': '4' });
  h.updates.unsubscribe('main');
  h.updates.subscribe({ main: 'http://edge/updates/a?token=3.z' });
  assert.deepEqual(h.last().settings.headers, {});
});

test('a throwing onForbidden callback is reported and the event still fires', () => {
  const h = harness();
  const boom = new Error('could not fetch a fresh URL');
  h.updates.onForbidden('main', () => {
    throw boom;
  });
  h.updates.subscribe({ main: 'http://edge/updates/a?token=1.x' });
  h.last().respond(403, {}, 'token expired');
  assert.deepEqual(h.reported, [boom]);
  assert.equal(h.triggered.length, 1);
});

test('a refused subscription stays stopped when the page comes back from the back/forward cache', () => {
  const h = harness();
  h.updates.subscribe({ main: 'http://edge/updates/a?token=1.x', other: 'http://edge/updates/b' });
  h.requests[0].respond(403, {}, 'token expired');
  h.fire('pagehide', { persisted: true });
  h.fire('pageshow', { persisted: true });
  assert.deepEqual(
    h.requests.slice(2).map((request) => request.settings.url),
    ['http://edge/updates/b'],
  );
});

test('a poll that times out is asked again at once from the same cursor, without backing off', () => {
  const h = harness();
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.last().message(T0, '0', { type: 'x' });
  h.clock.advance(60000);
  assert.equal(h.requests[1].statusText, 'timeout');
  assert.equal(h.requests.length, 3);
  assert.equal(h.last().sentAt, 60000);
  assert.deepEqual(h.last().settings.headers, { 'If-Modified-Since': T0, 'If-None-Match': '0' });
  h.clock.advance(60000 * 5);
  assert.equal(h.requests.length, 8);
  assert.deepEqual(h.warnings, []);
});

test('a timeout shorter than the interval still waits out the interval', () => {
  const h = harness();
  h.updates.options.timeout = 100;
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.clock.advance(10000);
  assert.deepEqual(
    h.requests.map((request) => request.sentAt),
    [0, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000],
  );
});

test('a 200 without a cursor backs off instead of fetching the same message in a loop', () => {
  const h = harness({ random: () => 0 });
  const seen = [];
  h.updates.registerProcessor('main', 'answer', (data) => seen.push(data));
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.last().respond(200, {}, '{"type": "answer"}');
  assert.equal(h.requests.length, 1);
  assert.deepEqual(seen, []);
  h.clock.advance(500);
  assert.equal(h.requests.length, 2);
});

test('no request is made more often than the back-off allows during a run of failures', () => {
  let seed = 42;
  const random = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const h = harness({ random });
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  // The edge is down for ten minutes: every poll fails at once or times out.
  const statuses = [0, 502, 503, 0, 500];
  let failures = 0;
  while (h.clock.now() < 600000) {
    const request = h.last();
    if (!request.settled) {
      failures += 1;
      request.respond(statuses[failures % statuses.length]);
    }
    h.clock.advance(10);
  }
  const starts = h.requests.map((request) => request.sentAt);
  for (let n = 1; n < starts.length; n += 1) {
    const least = 0.5 * Math.min(30000, 1000 * 2 ** (n - 1));
    assert.ok(starts[n] - starts[n - 1] >= least, `poll ${n} came ${starts[n] - starts[n - 1]} ms after the one before`);
  }
  // Ten minutes at a 15-30 s cap is a few dozen polls, not thousands.
  assert.ok(h.requests.length <= 45, `${h.requests.length} polls`);
});

test('unsubscribe aborts the poll in flight and stops the loop', () => {
  const h = harness();
  h.updates.subscribe({ main: 'http://edge/updates/a', other: 'http://edge/updates/b' });
  const [main, other] = h.requests;
  h.updates.unsubscribe('main');
  assert.equal(main.aborted, true);
  assert.equal(other.aborted, false);
  h.clock.advance(600000);
  const polls = (url) => h.requests.filter((request) => request.settings.url === url).length;
  assert.equal(polls('http://edge/updates/a'), 1);
  assert.ok(polls('http://edge/updates/b') > 1, 'the other channel goes on');
  assert.deepEqual(h.warnings, [], 'an abort is not an error');
});

test('unsubscribe during a back-off cancels the pending poll', () => {
  const h = harness();
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.last().respond(500);
  assert.equal(h.clock.pending(), 1);
  h.updates.unsubscribe('main');
  assert.equal(h.clock.pending(), 0);
  h.clock.advance(600000);
  assert.equal(h.requests.length, 1);
});

test('a processor may unsubscribe its own channel', () => {
  const h = harness();
  h.updates.registerProcessor('main', 'stop', () => h.updates.unsubscribe('main'));
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.last().message(T0, '0', { type: 'stop' });
  assert.equal(h.requests.length, 1);
  assert.equal(h.clock.pending(), 0);
});

test('subscribing a name again with the same URL does nothing; with another URL restarts it from the start', () => {
  const h = harness();
  const seen = [];
  h.updates.registerProcessor('main', 'answer', (data) => seen.push(data.value));
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.last().message(T0, '0', { type: 'answer', value: 1 });
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  assert.equal(h.requests.length, 2);
  const old = h.last();
  h.updates.subscribe({ main: 'http://edge/updates/b' });
  assert.equal(old.aborted, true);
  assert.equal(h.requests.length, 3);
  assert.equal(h.last().settings.url, 'http://edge/updates/b');
  assert.deepEqual(h.last().settings.headers, {});
  h.last().message(T1, '0', { type: 'answer', value: 2 });
  assert.deepEqual(seen, [1, 2], 'processors belong to the name and survive the restart');
});

test('an unsubscribed name can be subscribed again and keeps its processors', () => {
  const h = harness();
  const seen = [];
  h.updates.registerProcessor('main', 'answer', (data) => seen.push(data.value));
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.updates.unsubscribe('main');
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.last().message(T0, '0', { type: 'answer', value: 1 });
  assert.deepEqual(seen, [1]);
});

test('pagehide aborts every poll; pageshow from the back/forward cache resumes them with their cursors', () => {
  const h = harness();
  h.updates.subscribe({ main: 'http://edge/updates/a', other: 'http://edge/updates/b' });
  h.requests[0].message(T0, '3', { type: 'x' });
  h.requests[1].respond(500);
  const inFlight = h.requests.filter((request) => !request.settled);
  assert.equal(inFlight.length, 1);
  h.fire('pagehide', { persisted: true });
  assert.equal(inFlight[0].aborted, true);
  h.clock.advance(600000);
  assert.equal(h.requests.length, 3, 'nothing polls while the page is hidden');
  h.fire('pageshow', { persisted: true });
  const resumed = h.requests.slice(3);
  assert.deepEqual(
    resumed.map((request) => [request.settings.url, request.settings.headers]),
    [
      ['http://edge/updates/a', { 'If-Modified-Since': T0, 'If-None-Match': '3' }],
      ['http://edge/updates/b', {}],
    ],
  );
  assert.deepEqual(h.warnings.length, 1, 'only the 500 was an error, not the aborts');
});

test('the first pageshow of a page load does not start extra polls', () => {
  const h = harness();
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  h.fire('pageshow', { persisted: false });
  assert.equal(h.requests.length, 1);
});

test('withCredentials and timeout come from $.updates.options', () => {
  const h = harness();
  h.updates.options.withCredentials = false;
  h.updates.options.timeout = 90000;
  h.updates.subscribe({ main: 'http://edge/updates/a' });
  assert.deepEqual(h.last().settings.xhrFields, { withCredentials: false });
  assert.equal(h.last().settings.timeout, 90000);
});

test('loaded as a classic script it installs jQuery.updates, and a second load keeps the first', () => {
  const source = fs.readFileSync(path.join(__dirname, '..', 'pushserver.js'), 'utf8');
  const jQuery = () => ({ trigger() {} });
  jQuery.ajax = () => fakeRequest({}, fakeClock());
  const window = { jQuery, setTimeout, clearTimeout, document: {}, addEventListener() {} };
  const context = vm.createContext({ window, console });
  vm.runInContext(source, context);
  const installed = jQuery.updates;
  assert.equal(typeof installed.subscribe, 'function');
  assert.equal(typeof installed.registerProcessor, 'function');
  assert.equal(typeof installed.unsubscribe, 'function');
  assert.equal(typeof installed.onMissed, 'function');
  assert.equal(typeof installed.onForbidden, 'function');
  assert.deepEqual(Object.keys(installed.options).sort(), ['backoff', 'interval', 'timeout', 'withCredentials']);
  vm.runInContext(source, context);
  assert.equal(jQuery.updates, installed);
});

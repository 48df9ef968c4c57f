'use strict';

// pushserver.createClient between its transports: when a location's streams
// keep failing it is long-polled, one XMLHttpRequest loop per channel, from
// the cursors the streams had; later the stream is tried again beside the
// polls, and takes over once it opens. Every update once, in order,
// throughout. Fake EventSource, XMLHttpRequest and clock; no network.

const test = require('node:test');
const assert = require('node:assert/strict');

const { clientHarness } = require('../testing/fakes.js');

const EDGE = 'http://site.example/updates/';
const T = 1733000000;

function setup(options = {}, browser = {}) {
  const h = clientHarness(options, browser);
  h.record('news');
  h.record('me');
  return h;
}

function update(n) {
  return { type: 'answer', n };
}

function httpDate(time) {
  return new Date(time * 1000).toUTCString();
}

// `count` streams in a row answered without a stream (what EventSource
// reports for a refusal, or for a server that does not stream).
function refuse(h, count) {
  for (let i = 0; i < count; i += 1) {
    h.stream().answer();
    if (i < count - 1) {
      h.waitFor(h.streams);
    }
  }
}

test('after streamFailures streams answered without a stream, each channel is long-polled from its cursor', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me' });
  h.stream().open();
  h.stream().send(`[${T}:0],-`, update(1));
  h.stream().end();
  h.waitFor(h.streams);
  refuse(h, 2);
  assert.equal(h.polls.length, 0, 'two refusals are not yet a pattern');
  h.waitFor(h.streams);
  refuse(h, 1);
  assert.equal(h.EventSource.live().length, 0);
  assert.deepEqual(
    h.polls.map((poll) => [poll.url, poll.requestHeaders]),
    [
      [EDGE + 'news', { 'If-Modified-Since': httpDate(T), 'If-None-Match': '0' }],
      [EDGE + 'me', {}],
    ],
  );
  assert.equal(h.client.transportOf('news'), 'longpoll');
  assert.match(h.warnings.at(-1), /news, me: eventsource failed 3 times in a row; using longpoll, trying eventsource again in 300 s/);
  const [news, me] = h.polls;
  news.message(`${T}:1`, update(2));
  me.message(`${T}:0`, update(3));
  assert.deepEqual(h.seen, [
    ['news', 1],
    ['news', 2],
    ['me', 3],
  ]);
  assert.deepEqual(h.poll().requestHeaders, { 'If-Modified-Since': httpDate(T), 'If-None-Match': '0' });
});

test('a stream tried again beside the polls takes over once it opens, and nothing is processed twice or skipped', () => {
  const h = setup({ streamRetry: 60000 });
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me' });
  refuse(h, 3);
  const [news, me] = h.polls;
  news.message(`${T}:0`, update(1));
  me.message(`${T}:0`, update(2));
  h.poll().message(`${T}:1`, update(3)); // me again
  const streamsBefore = h.streams.length;
  assert.equal(h.waitFor(h.streams), 60000);
  assert.equal(h.streams.length, streamsBefore + 1);
  const probe = h.stream();
  assert.equal(probe.url, `${EDGE}news,me?last_event_id=${T}:0,${T}:1`);
  assert.equal(h.XMLHttpRequest.live().length, 2, 'the polls go on until the stream opens');
  // While the stream connects, a poll brings news 1.
  h.XMLHttpRequest.live()[0].message(`${T}:1`, update(4));
  probe.open();
  assert.equal(h.XMLHttpRequest.live().length, 0);
  assert.equal(h.client.transportOf('me'), 'eventsource');
  const pollsAfter = h.polls.length;
  // The stream started from the cursors it was opened with, so it brings news 1 again.
  probe.send(`[${T}:1],${T}:1`, update(4));
  probe.send(`[${T}:2],${T}:1`, update(5));
  probe.send(`${T}:2,[${T}:2]`, update(6));
  assert.deepEqual(h.seen, [
    ['news', 1],
    ['me', 2],
    ['me', 3],
    ['news', 4],
    ['news', 5],
    ['me', 6],
  ]);
  h.clock.advance(600000);
  assert.equal(h.polls.length, pollsAfter, 'no poll once the stream carries the channels');
});

test('a stream that still fails when tried again leaves the polls running and is tried again later', () => {
  const h = setup({ streamRetry: 60000 });
  h.client.subscribe({ news: EDGE + 'news' });
  refuse(h, 3);
  h.poll().message(`${T}:0`, update(1));
  h.waitFor(h.streams);
  const probe = h.stream();
  probe.answer();
  assert.equal(probe.closed, true);
  assert.equal(h.XMLHttpRequest.live().length, 1);
  assert.equal(h.client.transportOf('news'), 'longpoll');
  h.poll().message(`${T}:1`, update(2));
  assert.equal(h.waitFor(h.streams), 60000);
  assert.equal(h.stream().query().get('last_event_id'), `${T}:1`);
  assert.deepEqual(h.seen, [
    ['news', 1],
    ['news', 2],
  ]);
});

test('no open within openTimeout (a proxy holding the stream back) counts towards long-polling', () => {
  const h = setup({ openTimeout: 4000 }, { random: () => 0 });
  h.client.subscribe({ news: EDGE + 'news' });
  // 4 s without an open, then 0.5 s and 1 s of back-off.
  assert.equal(h.waitFor(h.streams), 4500);
  assert.equal(h.waitFor(h.streams), 5000);
  assert.equal(h.polls.length, 0);
  assert.equal(h.waitFor(h.polls), 4000);
  assert.equal(h.EventSource.live().length, 0);
  assert.equal(h.poll().url, EDGE + 'news');
});

test('streams that open and end at once count towards long-polling; ones that end later do not', () => {
  const h = setup({ openTimeout: 4000 });
  h.client.subscribe({ news: EDGE + 'news' });
  for (let i = 0; i < 3; i += 1) {
    h.stream().open();
    h.stream().end();
    if (i < 2) {
      h.waitFor(h.streams);
    }
  }
  assert.equal(h.polls.length, 1);

  const g = setup({ openTimeout: 4000 });
  g.client.subscribe({ news: EDGE + 'news' });
  for (let i = 0; i < 10; i += 1) {
    g.stream().open();
    g.clock.advance(4000);
    g.stream().end();
    g.waitFor(g.streams);
  }
  assert.equal(g.polls.length, 0);
});

test('lost connections back off but never make a location long-polled', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news' });
  for (let i = 0; i < 12; i += 1) {
    h.stream().drop();
    h.waitFor(h.streams);
  }
  assert.equal(h.polls.length, 0);
  assert.equal(h.client.transportOf('news'), 'eventsource');
});

test('when the polls that replaced a stream end an outage, the stream is tried again at once', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news' });
  refuse(h, 3); // a balancer answering 502 while every edge restarts
  h.poll().respond(502);
  h.waitFor(h.polls);
  const streams = h.streams.length;
  h.poll().message(`${T}:0`, update(1));
  h.clock.advance(0);
  assert.equal(h.streams.length, streams + 1);
  assert.equal(h.stream().query().get('last_event_id'), `${T}:0`);
  h.stream().open();
  assert.equal(h.XMLHttpRequest.live().length, 0);
  assert.deepEqual(h.seen, [['news', 1]]);
});

test('polls that work at once after the fallback wait streamRetry before the stream is tried again', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news' });
  refuse(h, 3);
  h.poll().message(`${T}:0`, update(1));
  h.poll().respond(502);
  h.waitFor(h.polls);
  h.poll().message(`${T}:1`, update(2));
  const streams = h.streams.length;
  h.clock.advance(299000);
  assert.equal(h.streams.length, streams);
});

test('without EventSource every channel is long-polled from the start', () => {
  const h = setup({}, { eventSource: false });
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me' });
  assert.equal(h.streams.length, 0);
  assert.deepEqual(
    h.polls.map((poll) => poll.url),
    [EDGE + 'news', EDGE + 'me'],
  );
  assert.equal(h.client.transportOf('news'), 'longpoll');
  h.clock.advance(3600000);
  assert.equal(h.streams.length, 0);
});

test('a refused token shows on the polls the stream fell back to; a fresh URL carries on from the cursor by stream', () => {
  const h = setup();
  const refused = [];
  h.client.onForbidden('news', (name, reason) => {
    refused.push([name, reason]);
    h.client.subscribe({ [name]: EDGE + 'news?token=2.y' });
  });
  h.client.subscribe({ news: EDGE + 'news?token=1.x' });
  h.stream().open();
  h.stream().send(`${T}:4`, update(1));
  h.stream().end(); // the token expires while the stream is open
  h.waitFor(h.streams);
  refuse(h, 3);
  assert.equal(h.poll().url, EDGE + 'news?token=1.x');
  h.poll().respond(403, { 'Content-Type': 'text/plain' }, 'token expired\n');
  assert.deepEqual(refused, [['news', 'token expired']]);
  assert.equal(h.stream().url, `${EDGE}news?token=2.y&last_event_id=${T}:4`);
  h.stream().open();
  h.stream().send(`${T}:5`, update(2));
  h.clock.advance(3600000);
  assert.ok(
    h.polls.every((poll) => poll.url.startsWith(EDGE + 'news?token=1.x')),
    'the refused URL is not asked again',
  );
  assert.equal(h.polls.length, 1);
  assert.deepEqual(h.seen, [
    ['news', 1],
    ['news', 2],
  ]);
});

test('pagehide aborts the polls of a fallback; pageshow polls again, still falling back', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news' });
  refuse(h, 3);
  h.poll().message(`${T}:2`, update(1));
  const held = h.poll();
  h.fire('pagehide', { persisted: true });
  assert.equal(held.aborted, true);
  h.clock.advance(3600000);
  assert.equal(h.clock.pending(), 0);
  h.fire('pageshow', { persisted: true });
  assert.equal(h.EventSource.live().length, 0);
  assert.deepEqual(h.poll().requestHeaders, { 'If-Modified-Since': httpDate(T), 'If-None-Match': '2' });
  assert.equal(h.waitFor(h.streams), 300000);
});

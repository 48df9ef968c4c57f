'use strict';

// pushserver.createClient over EventSource: one stream per location for
// all its channels, cursors across reconnects and changes of the set,
// missed and deleted channels, named events, pagehide / pageshow. Fake
// EventSource, XMLHttpRequest and clock (js/testing/fakes.js); no network.

const test = require('node:test');
const assert = require('node:assert/strict');

const { parseStreamId, formatStreamCursor } = require('../pushserver.js');
const { clientHarness: setup } = require('../testing/fakes.js');

const EDGE = 'http://site.example/updates/';
const T = 1733000000;

function update(n, type = 'answer') {
  return { type, n };
}

test('parseStreamId reads a one-channel id and the bracketed cursor of a several-channel one', () => {
  assert.deepEqual(parseStreamId(`${T}:3`, 1), { own: 0, cursor: { time: T, tag: 3 } });
  assert.deepEqual(parseStreamId(`${T}:0,[${T + 5}:2],-`, 3), { own: 1, cursor: { time: T + 5, tag: 2 } });
  for (const [text, count] of [
    [`${T}:0,${T}:1`, 2], // no bracket
    [`[${T}:0],[${T}:1]`, 2], // two
    [`[-],${T}:1`, 2], // the event's own channel without a cursor
    [`[${T}:0]`, 2], // too few
    [`${T}:x`, 1],
    ['', 1],
  ]) {
    assert.equal(parseStreamId(text, count), null, text);
  }
  assert.equal(formatStreamCursor([{ time: T, tag: 1 }, null]), `${T}:1,-`);
});

test('the channels of one location share one EventSource whose URL names them in order', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'user%2F42', odd: EDGE + 'a,b' });
  assert.equal(h.streams.length, 1);
  // A literal comma would make the edge read two channels: it is sent encoded.
  assert.equal(h.stream().url, EDGE + 'news,user%2F42,a%2Cb');
  assert.equal(h.stream().withCredentials, false);
  assert.equal(h.polls.length, 0);
  assert.equal(h.client.transportOf('news'), 'eventsource');
});

test('withCredentials reaches the EventSource and the polls when asked', () => {
  const h = setup({ withCredentials: true, streamFailures: 1 });
  h.client.subscribe({ news: EDGE + 'news' });
  assert.equal(h.stream().withCredentials, true);
  h.stream().answer();
  assert.equal(h.poll().withCredentials, true);
});

test('each update reaches the processors of its name and type once, in order, routed by the bracketed cursor', () => {
  const h = setup();
  h.record('news');
  h.record('me');
  h.client.registerProcessor('news', 'answer', (data) => h.seen.push(['news again', data.n]));
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me' });
  const stream = h.stream();
  stream.open();
  stream.send(`[${T}:0],-`, update(1));
  stream.send(`${T}:0,[${T}:1]`, update(2));
  stream.send(`[${T}:2],${T}:1`, update(3));
  stream.send(`[${T}:3],${T}:1`, update(4, 'nobody-listens'));
  stream.send(`${T}:3,[${T}:2]`, 'not json');
  assert.deepEqual(h.seen, [
    ['news', 1],
    ['news again', 1],
    ['me', 2],
    ['news', 3],
    ['news again', 3],
  ]);
  assert.equal(h.warnings.length, 1);
  assert.match(h.warnings[0], /me: update skipped: body is not JSON/);
});

test('an event whose id does not fit the stream is skipped with a warning and moves no cursor', () => {
  const h = setup();
  h.record('news');
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me' });
  const stream = h.stream();
  stream.open();
  stream.send(`${T}:0`, update(1));
  assert.deepEqual(h.seen, []);
  assert.match(h.warnings[0], /news, me: event skipped/);
  stream.drop();
  h.clock.advance(1000);
  assert.equal(h.stream().query().get('last_event_id'), undefined);
});

test('after a lost stream the client reconnects itself with every cursor and processes nothing twice', () => {
  const h = setup();
  h.record('news');
  h.record('me');
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me', quiet: EDGE + 'quiet' });
  const first = h.stream();
  first.open();
  first.send(`[${T}:0],-,-`, update(1));
  first.send(`${T}:0,[${T}:4],-`, update(2));
  first.drop();
  // Closed at once, so the browser does not reconnect on its own without back-off.
  assert.equal(first.closed, true);
  h.clock.advance(749); // the first failure waits base * 0.75 with random() = 0.5
  assert.equal(h.streams.length, 1);
  h.clock.advance(1);
  const again = h.stream();
  assert.equal(h.streams.length, 2);
  assert.equal(again.url.split('?')[0], EDGE + 'news,me,quiet');
  assert.equal(again.query().get('last_event_id'), `${T}:0,${T}:4,-`);
  again.open();
  again.send(`${T}:0,[${T}:4],-`, update(2)); // an edge replaying what was seen: dropped
  again.send(`[${T + 1}:0],${T}:4,-`, update(3));
  assert.deepEqual(h.seen, [
    ['news', 1],
    ['me', 2],
    ['news', 3],
  ]);
  assert.equal(h.polls.length, 0);
});

test('a change of the set opens the stream again with the cursors it had; other locations are not disturbed', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news', elsewhere: 'http://site.example/other/x' });
  assert.equal(h.streams.length, 2);
  const [news, elsewhere] = h.streams;
  news.open();
  news.send(`${T}:7`, update(1));
  h.client.subscribe({ me: EDGE + 'me' });
  assert.equal(news.closed, true);
  assert.equal(h.stream().url, `${EDGE}news,me?last_event_id=${T}:7,-`);
  h.stream().open();
  h.stream().send(`${T}:7,[${T}:8]`, update(2));
  h.client.unsubscribe('news');
  assert.equal(h.stream().url, `${EDGE}me?last_event_id=${T}:8`);
  h.client.unsubscribe('me');
  assert.equal(h.EventSource.live().length, 1);
  assert.equal(elsewhere.closed, false);
  assert.equal(h.streams.length, 4);
});

test('a query string of its own (a signed URL) gives a channel a stream of its own, the query kept', () => {
  const h = setup();
  h.client.subscribe({ a: EDGE + 'a?token=1.x', b: EDGE + 'b?token=2.y', c: EDGE + 'c' });
  assert.deepEqual(
    h.streams.map((stream) => stream.url),
    [EDGE + 'a?token=1.x', EDGE + 'b?token=2.y', EDGE + 'c'],
  );
  h.streams[0].open();
  h.streams[0].send(`${T}:1`, update(1));
  h.streams[0].drop();
  h.clock.advance(1000);
  assert.equal(h.stream().url, `${EDGE}a?token=1.x&last_event_id=${T}:1`);
});

test('no stream names a channel twice or more than maxChannelsPerStream channels', () => {
  const h = setup({ maxChannelsPerStream: 2 });
  h.client.subscribe({ one: EDGE + 'x', two: EDGE + 'x', three: EDGE + 'y', four: EDGE + 'z' });
  assert.deepEqual(
    h.streams.map((stream) => stream.url),
    [EDGE + 'x,y', EDGE + 'x,z'],
  );
});

test('a missed event calls onMissed before the next update and moves no cursor', () => {
  const h = setup();
  const order = [];
  h.client.onMissed('me', (name) => order.push(['missed', name]));
  h.client.on('missed', (name) => order.push(['any missed', name]));
  h.client.registerProcessor('me', 'answer', (data) => order.push(['update', data.n]));
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me' });
  const stream = h.stream();
  stream.open();
  stream.missed('me');
  stream.send(`-,[${T}:9]`, update(1));
  stream.missed('nobody');
  assert.deepEqual(order, [
    ['missed', 'me'],
    ['any missed', 'me'],
    ['update', 1],
  ]);
  stream.drop();
  h.clock.advance(1000);
  assert.equal(h.stream().query().get('last_event_id'), `-,${T}:9`);
});

test('a deleted channel ends its subscription without reconnecting; the others carry on', () => {
  const h = setup();
  const deleted = [];
  h.client.onDeleted('news', (name) => deleted.push(name));
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me' });
  const stream = h.stream();
  stream.open();
  stream.send(`-,[${T}:1]`, update(1));
  stream.deleted('news');
  assert.deepEqual(deleted, ['news']);
  assert.equal(stream.closed, true);
  assert.equal(h.stream().url, `${EDGE}me?last_event_id=${T}:1`);
  h.stream().deleted('me');
  h.clock.advance(600000);
  assert.equal(h.streams.length, 2, 'no stream for a deleted channel');
  assert.equal(h.clock.pending(), 0);
  assert.equal(h.client.transportOf('news'), null);
  // Subscribing the URL again starts over.
  h.client.subscribe({ news: EDGE + 'news' });
  assert.equal(h.stream().url, EDGE + 'news');
});

test('processors of named events are listened for, including ones registered while the stream is open', () => {
  const h = setup({ events: ['custom'] });
  h.record('news', 'tick');
  h.client.subscribe({ news: EDGE + 'news' });
  const stream = h.stream();
  assert.ok(stream.listeners.has('tick'));
  assert.ok(stream.listeners.has('custom'));
  h.record('news', 'later');
  assert.ok(stream.listeners.has('later'));
  // Names no EventSource event can have, or that mean something else, are not listened for.
  h.record('news', 'error');
  h.record('news', 'two words');
  assert.equal(stream.listeners.get('error'), undefined);
  assert.equal(stream.listeners.has('two words'), false);
  stream.open();
  stream.send(`${T}:0`, update(1, 'tick'), 'tick');
  stream.send(`${T}:1`, update(2, 'later'), 'later');
  assert.deepEqual(h.seen, [
    ['news', 1],
    ['news', 2],
  ]);
});

test('back-off between reconnects doubles per failure with jitter, within half to all of its ceiling, capped', () => {
  for (const [r, factor] of [
    [0, 0.5],
    [0.999999, 0.9999995],
  ]) {
    const h = setup({ backoff: { base: 1000, cap: 8000 } }, { random: () => r });
    h.client.subscribe({ news: EDGE + 'news' });
    const gaps = [];
    for (let failure = 1; failure <= 7; failure += 1) {
      const before = h.streams.length;
      h.stream().drop(); // no connection at all: never a reason to fall back
      const start = h.clock.now();
      while (h.streams.length === before) {
        h.clock.advance(1);
      }
      gaps.push(h.clock.now() - start);
    }
    const ceilings = [1000, 2000, 4000, 8000, 8000, 8000, 8000];
    assert.deepEqual(
      gaps,
      ceilings.map((ceiling) => Math.ceil(ceiling * factor)),
      `random ${r}`,
    );
    assert.equal(h.polls.length, 0, 'lost connections are not a reason to long-poll');
  }
});

test('a stream that opened and stayed open for openTimeout starts its back-off afresh', () => {
  const h = setup({ openTimeout: 5000 }, { random: () => 0 });
  h.client.subscribe({ news: EDGE + 'news' });
  const waitForNext = () => h.waitFor(h.streams);
  const gaps = [];
  for (let i = 0; i < 3; i += 1) {
    h.stream().drop();
    gaps.push(waitForNext());
  }
  assert.deepEqual(gaps, [500, 1000, 2000]);
  h.stream().open();
  h.clock.advance(5000);
  h.stream().end();
  assert.equal(waitForNext(), 500);
  // Open, but ended before openTimeout: the back-off goes on growing.
  h.stream().open();
  h.clock.advance(4999);
  h.stream().end();
  assert.equal(waitForNext(), 1000);
});

test('pagehide closes every stream; pageshow opens them again with their cursors', () => {
  const h = setup();
  h.record('news');
  h.client.subscribe({ news: EDGE + 'news', other: 'http://site.example/other/x' });
  h.streams[0].open();
  h.streams[0].send(`${T}:3`, update(1));
  h.streams[1].drop(); // backing off at pagehide
  h.fire('pagehide', { persisted: true });
  assert.equal(h.EventSource.live().length, 0);
  h.clock.advance(600000);
  assert.equal(h.streams.length, 2, 'nothing while the page is hidden');
  assert.equal(h.clock.pending(), 0);
  h.fire('pageshow', { persisted: true });
  assert.deepEqual(
    h.streams.slice(2).map((stream) => stream.url),
    [`${EDGE}news?last_event_id=${T}:3`, 'http://site.example/other/x'],
  );
  h.fire('pageshow', { persisted: false });
  assert.equal(h.streams.length, 4);
});

test('status reports each subscription connecting, live and retrying, with its transport', () => {
  const h = setup();
  const statuses = [];
  h.client.onStatus('news', (name, status) => statuses.push(status));
  h.client.subscribe({ news: EDGE + 'news' });
  h.stream().open();
  h.stream().drop();
  h.clock.advance(1000);
  h.stream().open();
  assert.deepEqual(statuses, [
    { state: 'connecting', transport: 'eventsource' },
    { state: 'live', transport: 'eventsource' },
    { state: 'retrying', transport: 'eventsource', reason: 'stream ended', failures: 1, delay: 750 },
    { state: 'live', transport: 'eventsource' },
  ]);
});

test('close ends every subscription and keeps the processors for the next', () => {
  const h = setup();
  h.record('news');
  h.client.subscribe({ news: EDGE + 'news', other: 'http://site.example/other/x' });
  h.client.close();
  assert.equal(h.EventSource.live().length, 0);
  assert.equal(h.clock.pending(), 0);
  h.client.subscribe({ news: EDGE + 'news' });
  h.stream().open();
  h.stream().send(`${T}:0`, update(5));
  assert.deepEqual(h.seen, [['news', 5]]);
});

test('the ES module exports the object the classic script defines', async () => {
  const module = await import('../pushserver.module.js');
  const script = require('../pushserver.js');
  assert.equal(module.default, script);
  assert.equal(module.createClient, script.createClient);
  assert.equal(globalThis.pushserver, script);
});

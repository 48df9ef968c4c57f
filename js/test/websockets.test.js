'use strict';

// pushserver.createClient over WebSocket (transports: ['websocket', ...]):
// one socket per location for all its channels, ws+meta.nchan frames whose
// ids are the stream's, cursors across reconnects and across transports,
// the edge's notices and close codes, fallback by the same rules as the
// stream. Fake WebSocket, EventSource, XMLHttpRequest and clock
// (js/testing/fakes.js); no network.

const test = require('node:test');
const assert = require('node:assert/strict');

const { CLIENT_DEFAULTS } = require('../pushserver.js');
const { clientHarness } = require('../testing/fakes.js');

const EDGE = 'http://site.example/updates/';
const WS_EDGE = 'ws://site.example/updates/';
const T = 1733000000;
const ALL = ['websocket', 'eventsource', 'longpoll'];

function setup(options = {}, browser = {}) {
  const h = clientHarness({ transports: ALL, ...options }, browser);
  h.record('news');
  h.record('me');
  return h;
}

function update(n, type = 'answer') {
  return { type, n };
}

test('the default transports leave WebSocket out: a page opts in', () => {
  assert.deepEqual(CLIENT_DEFAULTS.transports, ['eventsource', 'longpoll']);
  const h = clientHarness();
  h.client.subscribe({ news: EDGE + 'news' });
  assert.equal(h.sockets.length, 0);
  assert.equal(h.streams.length, 1);
});

test('the channels of one location share one WebSocket on the ws: URL, offering ws+meta.nchan', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'user%2F42', odd: EDGE + 'a,b' });
  assert.equal(h.sockets.length, 1);
  assert.equal(h.socket().url, WS_EDGE + 'news,user%2F42,a%2Cb');
  assert.deepEqual(h.socket().protocols, ['ws+meta.nchan']);
  assert.equal(h.socket().binaryType, 'arraybuffer');
  assert.equal(h.streams.length + h.polls.length, 0);
  assert.equal(h.client.transportOf('news'), 'websocket');
  const secure = setup({}, { origin: 'https://site.example' });
  secure.client.subscribe({ news: 'https://push.example/updates/news' });
  assert.equal(secure.socket().url, 'wss://push.example/updates/news');
});

test('each frame reaches the processors of its name and type once, in order, routed by the bracketed cursor', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me' });
  const socket = h.socket();
  socket.open();
  socket.message(`[${T}:0],-`, update(1));
  socket.message(`${T}:0,[${T}:1]`, update(2), null);
  socket.message(`[${T}:0],${T}:1`, update(3)); // not newer than news's cursor: dropped
  socket.message(`[${T}:2],${T}:1`, '{"type": "answer",\n "n": 4}', 'text/plain');
  socket.message(`${T}:2,[${T}:3]`, 'not json');
  socket.frame('no header at all');
  socket.message(`${T}:9`, update(5)); // an id of one cursor on a socket of two
  assert.deepEqual(h.seen, [
    ['news', 1],
    ['me', 2],
    ['news', 4],
  ]);
  assert.equal(h.warnings.length, 3);
  assert.match(h.warnings[0], /me: update skipped: body is not JSON/);
  assert.match(h.warnings[1], /news, me: frame skipped: no ws\+meta\.nchan header/);
  assert.match(h.warnings[2], /news, me: frame skipped: id "1733000000:9" is not one of 2 cursor\(s\)/);
});

test('a binary frame is read as text after its header', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news' });
  h.socket().open();
  const bytes = new TextEncoder().encode(`id: ${T}:0\ncontent-type: application/json\n\n${JSON.stringify(update(7))}`);
  h.socket().frame(bytes.buffer);
  assert.deepEqual(h.seen, [['news', 7]]);
});

test('after a lost socket the client reconnects with every cursor and processes nothing twice', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me', quiet: EDGE + 'quiet' });
  const first = h.socket();
  first.open();
  first.message(`[${T}:0],-,-`, update(1));
  first.message(`${T}:0,[${T}:4],-`, update(2));
  first.closeWith(1006);
  assert.equal(first.closed, true);
  h.clock.advance(749); // the first failure waits base * 0.75 with random() = 0.5
  assert.equal(h.sockets.length, 1);
  h.clock.advance(1);
  const again = h.socket();
  assert.equal(again.url, `${WS_EDGE}news,me,quiet?last_event_id=${T}:0,${T}:4,-`);
  again.open();
  again.message(`${T}:0,[${T}:4],-`, update(2));
  again.message(`[${T + 1}:0],${T}:4,-`, update(3));
  assert.deepEqual(h.seen, [
    ['news', 1],
    ['me', 2],
    ['news', 3],
  ]);
  assert.equal(h.streams.length + h.polls.length, 0);
});

test('a missed notice calls onMissed and moves no cursor; one for another channel is ignored', () => {
  const h = setup();
  const order = [];
  h.client.onMissed('me', (name) => order.push(['missed', name]));
  h.client.registerProcessor('me', 'answer', (data) => order.push(['update', data.n]));
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me' });
  const socket = h.socket();
  socket.open();
  socket.notice('pushserver-missed', 'me', '-,[-]');
  socket.message(`-,[${T}:9]`, update(1));
  socket.notice('pushserver-missed', 'nobody', `-,[${T}:9]`);
  assert.deepEqual(order, [
    ['missed', 'me'],
    ['update', 1],
  ]);
  socket.closeWith(1006);
  h.clock.advance(1000);
  assert.equal(h.socket().query().get('last_event_id'), `-,${T}:9`);
});

test('a deleted notice ends that subscription; the socket opens again for the others', () => {
  const h = setup();
  const deleted = [];
  h.client.onDeleted('news', (name) => deleted.push(name));
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me' });
  const socket = h.socket();
  socket.open();
  socket.message(`-,[${T}:1]`, update(1));
  socket.notice('pushserver-deleted', 'news', `[-],${T}:1`);
  socket.closeWith(4410, 'channel deleted');
  assert.deepEqual(deleted, ['news']);
  assert.equal(socket.closed, true);
  assert.equal(h.socket().url, `${WS_EDGE}me?last_event_id=${T}:1`);
  assert.equal(h.client.transportOf('news'), null);
});

test('close code 4410 on a one-channel socket means deleted: no reconnect', () => {
  const h = setup();
  const deleted = [];
  h.client.onDeleted('news', (name) => deleted.push(name));
  h.client.subscribe({ news: EDGE + 'news' });
  h.socket().open();
  h.socket().closeWith(4410, 'channel deleted');
  assert.deepEqual(deleted, ['news']);
  h.clock.advance(600000);
  assert.equal(h.sockets.length, 1);
  assert.equal(h.streams.length + h.polls.length, 0);
  assert.equal(h.clock.pending(), 0);
});

test('close code 1001 (edge stopping) reconnects within backoff.base without counting a failure', () => {
  const h = setup({}, { random: () => 0.25 });
  h.client.subscribe({ news: EDGE + 'news' });
  h.socket().open();
  h.socket().message(`${T}:0`, update(1));
  h.socket().closeWith(1001, 'edge stopping');
  assert.equal(h.waitFor(h.sockets), 250);
  assert.equal(h.socket().query().get('last_event_id'), `${T}:0`);
  // The next failure is the first: its delay has not grown.
  h.socket().closeWith(1006);
  assert.equal(h.waitFor(h.sockets), 625);
  assert.deepEqual(h.warnings, [`pushserver: news: WebSocket: could not connect; connecting again in 625 ms`]);
});

test('a 1001 right after an open, with nothing delivered, is a failure like any early close', () => {
  const h = setup({ streamFailures: 2 });
  h.client.subscribe({ news: EDGE + 'news' });
  for (let i = 0; i < 2; i += 1) {
    h.socket().open();
    h.socket().closeWith(1001);
    if (i === 0) {
      h.waitFor(h.sockets);
    }
  }
  assert.equal(h.client.transportOf('news'), 'eventsource');
});

test('close code 1013 (slow reader) reconnects after back-off from the cursor, never a reason to fall back', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news' });
  h.socket().open();
  h.socket().message(`${T}:0`, update(0));
  // Closed at once, before anything arrived whole: still the reader's slowness.
  for (let n = 0; n < 5; n += 1) {
    h.socket().closeWith(1013, 'slow reader');
    h.waitFor(h.sockets);
    h.socket().open();
  }
  assert.equal(h.streams.length, 0, 'never fell back');
  assert.equal(h.socket().query().get('last_event_id'), `${T}:0`);
  h.socket().message(`${T}:1`, update(1));
  assert.deepEqual(
    h.seen.map(([, n]) => n),
    [0, 1],
  );
});

test('an edge that opens without ws+meta.nchan counts as a failure, and streamFailures of them fall back to the stream', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me' });
  for (let i = 0; i < 3; i += 1) {
    h.socket().open('');
    if (i < 2) {
      h.waitFor(h.sockets);
    }
  }
  assert.equal(h.WebSocket.live().length, 0);
  assert.equal(h.client.transportOf('news'), 'eventsource');
  assert.equal(h.stream().url, EDGE + 'news,me');
  assert.match(h.warnings[0], /WebSocket: the edge spoke no ws\+meta\.nchan, so frames carry no id/);
  assert.match(h.warnings.at(-1), /news, me: websocket failed 3 times in a row; using eventsource, trying websocket again in 300 s/);
});

test('cursors carry across transports: WebSocket to EventSource, and back when the WebSocket is tried again', () => {
  const h = setup({ streamRetry: 60000 });
  h.client.subscribe({ news: EDGE + 'news', me: EDGE + 'me' });
  h.socket().open();
  h.socket().message(`[${T}:0],-`, update(1));
  h.socket().closeWith(1006);
  for (let i = 0; i < 3; i += 1) {
    h.waitFor(h.sockets);
    h.socket().fail(); // a balancer that does not pass the upgrade
  }
  assert.equal(h.client.transportOf('news'), 'eventsource');
  const stream = h.stream();
  assert.equal(stream.query().get('last_event_id'), `${T}:0,-`);
  stream.open();
  stream.send(`${T}:0,[${T}:5]`, update(2));
  h.clock.advance(60000);
  const probe = h.socket();
  assert.equal(probe.url, `${WS_EDGE}news,me?last_event_id=${T}:0,${T}:5`);
  stream.send(`[${T}:6],${T}:5`, update(3)); // the stream carries on while the socket is tried
  probe.open();
  assert.equal(stream.closed, true, 'the WebSocket took over');
  assert.equal(h.client.transportOf('news'), 'websocket');
  probe.message(`[${T}:6],${T}:5`, update(3)); // what the stream already brought: dropped
  probe.message(`${T}:6,[${T}:7]`, update(4));
  assert.deepEqual(h.seen, [
    ['news', 1],
    ['me', 2],
    ['news', 3],
    ['me', 4],
  ]);
});

test('without a WebSocket in the browser the next transport carries the location', () => {
  const h = setup({ transports: ['websocket', 'longpoll'] }, { webSocket: false });
  h.client.subscribe({ news: EDGE + 'news' });
  assert.equal(h.sockets.length, 0);
  assert.equal(h.client.transportOf('news'), 'longpoll');
  assert.equal(h.poll().url, EDGE + 'news');
});

test('no open within openTimeout is a failure; sockets that failed to connect fall back to long-polls', () => {
  const h = setup({ transports: ['websocket', 'longpoll'], openTimeout: 2000 });
  h.client.subscribe({ news: EDGE + 'news' });
  h.clock.advance(2000);
  assert.equal(h.sockets[0].closed, true);
  assert.match(h.warnings[0], /news: WebSocket: no WebSocket within 2000 ms/);
  h.waitFor(h.sockets);
  h.socket().fail();
  h.waitFor(h.sockets);
  h.socket().fail();
  assert.equal(h.client.transportOf('news'), 'longpoll');
  assert.equal(h.poll().url, EDGE + 'news');
});

test('status reports a WebSocket connecting, live and retrying', () => {
  const h = setup();
  const statuses = [];
  h.client.onStatus('news', (name, status) => statuses.push(status));
  h.client.subscribe({ news: EDGE + 'news' });
  h.socket().open();
  h.socket().closeWith(1006);
  h.clock.advance(1000);
  h.socket().open();
  assert.deepEqual(statuses, [
    { state: 'connecting', transport: 'websocket' },
    { state: 'live', transport: 'websocket' },
    { state: 'retrying', transport: 'websocket', reason: 'WebSocket closed (1006)', failures: 1, delay: 750 },
    { state: 'live', transport: 'websocket' },
  ]);
});

test('pagehide closes the socket; pageshow opens it again with its cursor; close() closes it for good', () => {
  const h = setup();
  h.client.subscribe({ news: EDGE + 'news' });
  h.socket().open();
  h.socket().message(`${T}:3`, update(1));
  h.fire('pagehide', { persisted: true });
  assert.equal(h.WebSocket.live().length, 0);
  assert.equal(h.sockets[0].closedWith.code, 1000);
  h.fire('pageshow', { persisted: true });
  assert.equal(h.socket().url, `${WS_EDGE}news?last_event_id=${T}:3`);
  h.client.close();
  assert.equal(h.WebSocket.live().length, 0);
  assert.equal(h.clock.pending(), 0);
});

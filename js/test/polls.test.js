'use strict';

// pushserver.createClient long-polling through XMLHttpRequest: where the
// cursor goes (validators on the page's own origin, `last_event_id` in the
// query across origins, so no poll needs a preflight), edges that predate
// the query cursor, missed, deleted and timed-out polls. Fake
// XMLHttpRequest and clock; no network.

const test = require('node:test');
const assert = require('node:assert/strict');

const { createClient } = require('../pushserver.js');
const { fakeBrowser } = require('../testing/fakes.js');

const SAME = 'http://site.example/updates/';
const OTHER = 'http://push.example/updates/';
const T = 1733000000;

function setup(options = {}) {
  const b = fakeBrowser({ eventSource: false });
  const client = createClient(options, b.env);
  const seen = [];
  client.registerProcessor('news', 'answer', (data) => seen.push(data.n));
  return { ...b, client, seen };
}

function update(n) {
  return { type: 'answer', n };
}

test('a cross-origin poll carries its cursor as last_event_id in the query and sends no header', () => {
  const h = setup();
  h.client.subscribe({ news: OTHER + 'news?token=1.x' });
  assert.equal(h.poll().url, OTHER + 'news?token=1.x');
  h.poll().message(`${T}:0`, update(1));
  assert.equal(h.poll().url, `${OTHER}news?token=1.x&last_event_id=${T}:0`);
  assert.deepEqual(h.poll().requestHeaders, {});
  h.poll().message(`${T + 1}:0`, update(2));
  assert.equal(h.poll().url, `${OTHER}news?token=1.x&last_event_id=${T + 1}:0`);
  assert.deepEqual(h.seen, [1, 2]);
});

test('a relative URL is the page origin: its polls send validators', () => {
  const h = setup();
  h.client.subscribe({ news: '/updates/news' });
  assert.equal(h.poll().url, SAME + 'news');
  h.poll().message(`${T}:3`, update(1));
  assert.equal(h.poll().url, SAME + 'news');
  assert.deepEqual(h.poll().requestHeaders, {
    'If-Modified-Since': new Date(T * 1000).toUTCString(),
    'If-None-Match': '3',
  });
});

test('cursorInQuery chooses the query or the validators whatever the origin', () => {
  const query = setup({ cursorInQuery: true });
  query.client.subscribe({ news: SAME + 'news' });
  query.poll().message(`${T}:0`, update(1));
  assert.equal(query.poll().url, `${SAME}news?last_event_id=${T}:0`);
  const validators = setup({ cursorInQuery: false });
  validators.client.subscribe({ news: OTHER + 'news' });
  validators.poll().message(`${T}:0`, update(1));
  assert.equal(validators.poll().url, OTHER + 'news');
  assert.equal(validators.poll().requestHeaders['If-None-Match'], '0');
});

test('an edge that ignores last_event_id is noticed at its first repeat, which is dropped, and polled with validators', () => {
  const h = setup();
  h.client.subscribe({ news: OTHER + 'news' });
  h.poll().message(`${T}:0`, update(1));
  h.poll().message(`${T}:0`, update(1)); // the oldest message again
  assert.deepEqual(h.seen, [1]);
  assert.match(h.warnings[0], /news: the edge ignored last_event_id/);
  assert.equal(h.poll().url, OTHER + 'news');
  assert.equal(h.poll().requestHeaders['If-None-Match'], '0');
  h.poll().message(`${T}:1`, update(2));
  assert.deepEqual(h.seen, [1, 2]);
  assert.equal(h.clock.pending(), 1, 'only the poll in flight, no back-off');
});

test('a 200 not after the validators it answered backs off rather than repeating an update', () => {
  const h = setup({ backoff: { base: 1000, cap: 1000 } });
  h.client.subscribe({ news: SAME + 'news' });
  h.poll().message(`${T}:5`, update(1));
  h.poll().message(`${T}:5`, update(1));
  assert.deepEqual(h.seen, [1]);
  const polls = h.polls.length;
  h.clock.advance(749);
  assert.equal(h.polls.length, polls);
  h.clock.advance(1);
  assert.equal(h.polls.length, polls + 1);
});

test('X-Messages-Missed on a poll calls onMissed before its update', () => {
  const h = setup();
  const order = [];
  h.client.onMissed('news', (name) => order.push('missed ' + name));
  h.client.registerProcessor('news', 'answer', (data) => order.push('update ' + data.n));
  h.client.subscribe({ news: SAME + 'news' });
  h.poll().message(`${T}:0`, update(1), { 'X-Messages-Missed': '1' });
  assert.deepEqual(order, ['missed news', 'update 1']);
});

test('a 410 on a poll is a deleted channel: onDeleted, and no more polls', () => {
  const h = setup();
  const deleted = [];
  h.client.onDeleted('news', (name) => deleted.push(name));
  h.client.on('deleted', (name) => deleted.push('any ' + name));
  h.client.subscribe({ news: SAME + 'news' });
  h.poll().respond(410, {}, 'channel deleted\n');
  assert.deepEqual(deleted, ['news', 'any news']);
  h.clock.advance(3600000);
  assert.equal(h.polls.length, 1);
  assert.equal(h.clock.pending(), 0);
});

test('a poll that times out is asked again at once from the same cursor', () => {
  const h = setup({ timeout: 30000 });
  h.client.subscribe({ news: SAME + 'news' });
  h.poll().message(`${T}:0`, update(1));
  h.clock.advance(30000);
  assert.equal(h.polls.length, 3);
  assert.equal(h.polls[1].timeout, 30000);
  assert.equal(h.poll().requestHeaders['If-None-Match'], '0');
  assert.deepEqual(h.warnings, []);
});

test('unsubscribing aborts the poll in flight without a warning', () => {
  const h = setup();
  h.client.subscribe({ news: SAME + 'news' });
  const held = h.poll();
  h.client.unsubscribe('news');
  assert.equal(held.aborted, true);
  h.clock.advance(3600000);
  assert.equal(h.polls.length, 1);
  assert.deepEqual(h.warnings, []);
});

test('a name given a fresh token keeps its cursor; one given another channel starts over', () => {
  const h = setup();
  h.client.subscribe({ news: OTHER + 'news?token=1.x' });
  h.poll().message(`${T}:4`, update(1));
  h.client.subscribe({ news: OTHER + 'news?token=2.y' });
  assert.equal(h.poll().url, `${OTHER}news?token=2.y&last_event_id=${T}:4`);
  h.client.subscribe({ news: OTHER + 'other?token=3.z' });
  assert.equal(h.poll().url, OTHER + 'other?token=3.z');
});

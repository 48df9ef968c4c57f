'use strict';

// The client's pure functions: reading a response's cursor, the back-off
// delay, parsing bodies and classifying responses.

const test = require('node:test');
const assert = require('node:assert/strict');

const { readCursor, readResponse, parseUpdate, backoffDelay, DEFAULTS } = require('../pushserver.js');

function headers(map) {
  const lower = new Map(Object.entries(map).map(([name, value]) => [name.toLowerCase(), value]));
  return (name) => (lower.has(name.toLowerCase()) ? lower.get(name.toLowerCase()) : null);
}

const LAST_MODIFIED = 'Thu, 28 Nov 2024 00:00:00 GMT';

function read(status, getHeader, text, previous, timedOut = false) {
  return readResponse({ status, timedOut, getHeader, text }, previous);
}

test('readCursor takes the id from Last-Modified and Etag', () => {
  const cursor = readCursor(headers({ 'Last-Modified': LAST_MODIFIED, Etag: '3', 'Cache-Control': 'no-cache, etag=9' }));
  assert.deepEqual(cursor, { lastModified: LAST_MODIFIED, etag: '3' });
});

test('readCursor reads the tag from Cache-Control when Etag is not readable', () => {
  const cursor = readCursor(headers({ 'Last-Modified': LAST_MODIFIED, 'Cache-Control': 'no-cache, etag=7' }));
  assert.deepEqual(cursor, { lastModified: LAST_MODIFIED, etag: '7' });
});

test('readCursor treats an empty Etag as unreadable', () => {
  const cursor = readCursor(headers({ 'Last-Modified': LAST_MODIFIED, Etag: '', 'Cache-Control': 'no-cache, etag=0' }));
  assert.deepEqual(cursor, { lastModified: LAST_MODIFIED, etag: '0' });
});

test('readCursor gives null without a complete id', () => {
  assert.equal(readCursor(headers({ Etag: '1' })), null);
  assert.equal(readCursor(headers({ 'Last-Modified': LAST_MODIFIED })), null);
  assert.equal(readCursor(headers({ 'Last-Modified': LAST_MODIFIED, 'Cache-Control': 'no-cache' })), null);
});

test('backoffDelay doubles from base per failure and is capped', () => {
  const top = () => 1 - Number.EPSILON; // the largest factor random() can give
  const backoff = { base: 1000, cap: 30000 };
  const ceilings = [1, 2, 3, 4, 5, 6, 7, 50, 2000].map((failures) => Math.round(backoffDelay(failures, backoff, top)));
  assert.deepEqual(ceilings, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
});

test('backoffDelay jitter stays within half to all of the ceiling', () => {
  const backoff = { base: 1000, cap: 30000 };
  assert.equal(backoffDelay(3, backoff, () => 0), 2000);
  for (let i = 0; i < 1000; i += 1) {
    const delay = backoffDelay(3, backoff, Math.random);
    assert.ok(delay >= 2000 && delay < 4000, `delay ${delay} outside [2000, 4000)`);
  }
});

test('backoffDelay fills missing settings from the defaults', () => {
  assert.equal(backoffDelay(10, { base: 500 }, () => 0), DEFAULTS.backoff.cap / 2);
  assert.equal(backoffDelay(1, undefined, () => 0), DEFAULTS.backoff.base / 2);
});

test('parseUpdate accepts a JSON object with a type', () => {
  assert.deepEqual(parseUpdate('{"type": "answer", "value": 42}'), { update: { type: 'answer', value: 42 } });
});

test('parseUpdate rejects bodies that are not a JSON object with a type', () => {
  for (const body of ['', 'not json', '[1]', 'null', '"answer"', '{"value": 42}']) {
    const { update, reason } = parseUpdate(body);
    assert.equal(update, undefined, body);
    assert.match(reason, /JSON/, body);
  }
});

test('readResponse on a 200 gives the message, its cursor and whether messages were missed', () => {
  const getHeader = headers({ 'Last-Modified': LAST_MODIFIED, Etag: '0', 'X-Messages-Missed': '1' });
  const outcome = read(200, getHeader, '{"type": "answer"}', null);
  assert.deepEqual(outcome, {
    kind: 'message',
    cursor: { lastModified: LAST_MODIFIED, etag: '0' },
    missed: true,
    update: { type: 'answer' },
  });
  const quiet = read(200, headers({ 'Last-Modified': LAST_MODIFIED, Etag: '0' }), '{"type": "a"}', null);
  assert.equal(quiet.missed, false);
});

test('readResponse on a 200 with a bad body still advances the cursor', () => {
  const outcome = read(200, headers({ 'Last-Modified': LAST_MODIFIED, Etag: '4' }), 'oops', null);
  assert.equal(outcome.kind, 'message');
  assert.deepEqual(outcome.cursor, { lastModified: LAST_MODIFIED, etag: '4' });
  assert.equal(outcome.update, undefined);
  assert.match(outcome.warning, /not JSON/);
});

test('readResponse counts a 200 without an id as an error, so the message is not repeated in a loop', () => {
  const outcome = read(200, headers({}), '{"type": "answer"}', null);
  assert.equal(outcome.kind, 'error');
});

test('readResponse on a 304 keeps the echoed validators, or the previous ones when none are echoed', () => {
  const previous = { lastModified: LAST_MODIFIED, etag: '2' };
  const echoed = read(304, headers({ 'Last-Modified': LAST_MODIFIED, Etag: '2' }), '', previous);
  assert.deepEqual(echoed, { kind: 'notModified', cursor: { lastModified: LAST_MODIFIED, etag: '2' } });
  assert.deepEqual(read(304, headers({}), '', previous), { kind: 'notModified', cursor: previous });
  assert.deepEqual(read(304, headers({}), '', null), { kind: 'notModified', cursor: null });
});

test('readResponse asks again from the same cursor after a poll that timed out', () => {
  const previous = { lastModified: LAST_MODIFIED, etag: '2' };
  assert.deepEqual(read(0, headers({}), undefined, previous, true), { kind: 'notModified', cursor: previous });
});

test('readResponse counts network errors and statuses other than 200 and 304 as errors', () => {
  for (const status of [0, 201, 204, 400, 403, 404, 410, 500, 502, 503]) {
    assert.equal(read(status, headers({}), '', null).kind, 'error', String(status));
  }
});

test('readResponse reads a 403 refusing the token as forbidden, with the reason', () => {
  for (const reason of ['token missing', 'token expired', 'token invalid']) {
    assert.deepEqual(read(403, headers({}), reason + '\n', null), { kind: 'forbidden', reason });
  }
  for (const body of ['subscription refused\n', 'token expired soon', '', undefined]) {
    assert.equal(read(403, headers({}), body, null).kind, 'error', String(body));
  }
  assert.equal(read(401, headers({}), 'token expired\n', null).kind, 'error');
});

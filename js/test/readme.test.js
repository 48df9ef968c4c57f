'use strict';

// The README's option tables are the client's defaults: a key or a default
// changed on one side only fails here, printing the row the README should have.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const { CLIENT_DEFAULTS, DEFAULTS } = require('../pushserver.js');

const README = fs.readFileSync(path.join(__dirname, '..', '..', 'README.md'), 'utf8').split('\n');

// The lines of the section headed `heading`, up to the next heading of its level or above.
function section(heading) {
  const start = README.indexOf(heading);
  assert.notEqual(start, -1, `no ${heading} in README.md`);
  const level = heading.split(' ')[0];
  const end = README.findIndex((line, n) => n > start && /^#+ /.test(line) && line.split(' ')[0].length <= level.length);
  return README.slice(start + 1, end === -1 ? README.length : end);
}

// A default as the README writes it: JavaScript, single quotes, no quotes on keys.
function written(value) {
  if (Array.isArray(value)) {
    return '[' + value.map(written).join(', ') + ']';
  }
  if (value && typeof value === 'object') {
    return '{' + Object.entries(value).map(([key, inner]) => `${key}: ${written(inner)}`).join(', ') + '}';
  }
  return typeof value === 'string' ? `'${value}'` : String(value);
}

// The first table of `lines` as [option, default] pairs, the header left out.
function table(lines) {
  const rows = [];
  for (const line of lines.slice(lines.findIndex((line) => line.startsWith('| option |')) + 2)) {
    if (!line.startsWith('| `')) {
      break;
    }
    const [option, value] = line.split(' | ').map((cell) => cell.replace(/^\| /, '').replace(/^`|`$/g, ''));
    rows.push([option, value]);
  }
  return rows;
}

test("the README's table of createClient options is CLIENT_DEFAULTS", () => {
  const client = section('## In the browser: the JavaScript client');
  const jquery = client.indexOf('### `$.updates`: the jQuery API');
  assert.deepEqual(
    table(client.slice(0, jquery)),
    Object.entries(CLIENT_DEFAULTS).map(([key, value]) => [key, written(value)]),
  );
});

test("the README's table of $.updates.options is its DEFAULTS", () => {
  assert.deepEqual(
    table(section('### `$.updates`: the jQuery API')),
    Object.entries(DEFAULTS).map(([key, value]) => [key, written(value)]),
  );
});

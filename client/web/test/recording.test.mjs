// Event decoding, asciicast export and search of decrypted recordings.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeEvents, search, toAsciicast } from '../src/recording.js';

function encode(events) {
  const parts = [];
  for (const [code, t, data] of events) {
    const d = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    const head = new Uint8Array(13);
    const dv = new DataView(head.buffer);
    head[0] = code.charCodeAt(0);
    dv.setBigUint64(1, BigInt(Math.round(t * 1e6)));
    dv.setUint32(9, d.length);
    parts.push(head, d);
  }
  return Uint8Array.from(parts.flatMap((p) => [...p]));
}

test('decodes events and refuses truncated or oversized ones', () => {
  const evs = decodeEvents(encode([['o', 1.5, 'hi'], ['r', 2, '100x30']]));
  assert.deepEqual(evs.map((e) => [e.code, e.tUs]), [['o', 1500000], ['r', 2000000]]);
  const buf = encode([['o', 0, 'abc']]);
  assert.throws(() => decodeEvents(buf.subarray(0, buf.length - 1)), /truncated event data/);
  assert.throws(() => decodeEvents(buf.subarray(0, 5)), /truncated event header/);
  const big = encode([['o', 0, '']]);
  new DataView(big.buffer).setUint32(9, 0xffffffff);
  assert.throws(() => decodeEvents(big), /too large/);
  const bad = encode([['o', 0, '']]);
  bad[0] = 0x7a;
  assert.throws(() => decodeEvents(bad), /unknown event kind/);
});

test('asciicast keeps UTF-8 split across events whole', () => {
  const snow = new TextEncoder().encode('☃');
  const evs = decodeEvents(encode([['o', 0.1, snow.subarray(0, 2)], ['o', 0.2, snow.subarray(2)], ['r', 0.3, '90x20']]));
  const lines = toAsciicast({ width: 80, height: 24, started: 1 }, evs).trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(lines[0], { version: 2, width: 80, height: 24, timestamp: 1 });
  assert.equal(lines[1][2] + lines[2][2], '☃');
  assert.deepEqual(lines[3], [0.3, 'r', '90x20']);
});

test('search ignores escapes, is case-insensitive and finds matches across events', () => {
  const evs = decodeEvents(
    encode([
      ['o', 1, 'first line\r\n'],
      ['o', 2, '\u001b[31mERR\u001b[0mor: disk full\r\n'],
      ['o', 3, 'needle-'],
      ['o', 4, 'XYZ here\r\n'],
      ['i', 5, 'needle-XYZ'],
    ]),
  );
  const err = search(evs, 'error: disk');
  assert.equal(err.length, 1);
  assert.equal(err[0].time, 2);
  assert.equal(err[0].context, 'ERRor: disk full');
  const split = search(evs, 'needle-xyz');
  assert.deepEqual(split.map((h) => h.time), [4]);
  assert.deepEqual(search(evs, ''), []);
});

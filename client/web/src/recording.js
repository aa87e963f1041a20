// Recordings read in the browser: the gateway hands over the clear header and
// sealed chunks; this tab unwraps the data key with the user's credentials,
// verifies the hash chain, opens each chunk (AES-256-GCM, AAD = chunk prefix
// ‖ session id) and decodes the events into asciicast v2 for the player.

import { b64decode } from './kms.js';
import { sha256 } from './frame.js';

const MAGIC = [0x41, 0x4c, 0x52, 0x43]; // "ALRC"
const PREFIX = 4 + 1 + 8 + 32;
const NONCE = 12;
const TAG = 16;
const MAX_CHUNK = 8 << 20;
const MAX_EVENT = 1 << 20;
const MAX_HEADER = 64 * 1024;
const enc = new TextEncoder();

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');

export function recordingsCall(api, body) {
  return api.call('ssm', 'Airlock.Recordings', body, '/airlock/v1/recordings');
}

/** Decodes a chunk's plaintext into events; every length checked first. */
export function decodeEvents(buf) {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out = [];
  let o = 0;
  while (o < buf.length) {
    if (buf.length - o < 13) throw new Error('truncated event header');
    const code = String.fromCharCode(buf[o]);
    if (!'oirc'.includes(code)) throw new Error(`unknown event kind ${buf[o]}`);
    const tUs = Number(dv.getBigUint64(o + 1));
    const len = dv.getUint32(o + 9);
    if (len > MAX_EVENT) throw new Error(`event of ${len} bytes is too large`);
    if (buf.length - o - 13 < len) throw new Error('truncated event data');
    out.push({ tUs, code, data: buf.subarray(o + 13, o + 13 + len) });
    o += 13 + len;
  }
  return out;
}

async function unwrapKey(api, header) {
  // The reader's own credentials: IAM decides with kms:EncryptionContext:*.
  const r = await api.kms('Decrypt', {
    CiphertextBlob: header.encryptedDataKey,
    EncryptionContext: header.encryptionContext,
    KeyId: header.kmsKeyId,
  });
  const raw = b64decode(r.Plaintext || '');
  if (raw.length !== 32) throw new Error(`recording data key is ${raw.length} bytes, not 32`);
  const key = await crypto.subtle.importKey('raw', raw, 'AES-GCM', false, ['decrypt']);
  raw.fill(0);
  return key;
}

/**
 * Fetches, verifies and opens one session's recording. Returns
 * {header, events, verified, problems}.
 */
export async function loadRecording(api, sessionId) {
  const got = await recordingsCall(api, { Action: 'Get', SessionId: sessionId });
  const headerBytes = b64decode(got.Header || '');
  if (headerBytes.length > MAX_HEADER) throw new Error('recording header too large');
  const header = JSON.parse(new TextDecoder().decode(headerBytes));
  if (header.format !== 1) throw new Error(`unsupported recording format ${header.format}`);
  if (header.sessionId !== sessionId) throw new Error('recording header names another session');
  const key = await unwrapKey(api, header);

  const problems = [];
  let prev = await sha256(concat(enc.encode('airlock-recording-v1\0'), headerBytes));
  const events = [];
  const sid = enc.encode(sessionId);
  let expect = 0;
  let from = 0;
  for (;;) {
    const page = await recordingsCall(api, { Action: 'GetChunks', SessionId: sessionId, From: from });
    const chunks = page.Chunks || [];
    if (!chunks.length) break;
    for (const c of chunks) {
      const bytes = b64decode(c.Data);
      if (bytes.length > MAX_CHUNK || bytes.length < PREFIX + NONCE + TAG) throw new Error(`chunk ${c.Seq} has a bad size`);
      if (!MAGIC.every((m, i) => bytes[i] === m) || bytes[4] !== 1) throw new Error(`chunk ${c.Seq} is not a version-1 chunk`);
      const seq = Number(new DataView(bytes.buffer).getBigUint64(5));
      if (seq !== expect) problems.push(`chunk ${expect} is missing (found ${seq})`);
      if (!equal(bytes.subarray(13, 45), prev)) problems.push(`chunk ${seq} does not follow the chain`);
      let plain;
      try {
        plain = new Uint8Array(
          await crypto.subtle.decrypt(
            { name: 'AES-GCM', iv: bytes.subarray(PREFIX, PREFIX + NONCE), additionalData: concat(bytes.subarray(0, PREFIX), sid) },
            key,
            bytes.subarray(PREFIX + NONCE),
          ),
        );
      } catch {
        throw new Error(`chunk ${seq} failed authentication (altered, or the wrong key)`);
      }
      events.push(...decodeEvents(plain));
      prev = await sha256(concat(prev, bytes));
      expect = seq + 1;
    }
    from = expect;
  }
  let complete = false;
  if (got.End) {
    const end = JSON.parse(new TextDecoder().decode(b64decode(got.End)));
    complete = true;
    if (end.chunks !== expect) problems.push(`the end record names ${end.chunks} chunks, ${expect} were read`);
    if (String(end.finalHash).toLowerCase() !== hex(prev)) problems.push('the final chain hash does not match the end record');
  }
  return { header, events, complete, verified: problems.length === 0, problems };
}

/** asciicast v2 text for the player, with a stream-safe UTF-8 decode. */
export function toAsciicast(header, events) {
  const lines = [
    JSON.stringify({ version: 2, width: header.width || 80, height: header.height || 24, timestamp: header.started }),
  ];
  const decoders = { o: new TextDecoder(), i: new TextDecoder() };
  for (const e of events) {
    const t = e.tUs / 1e6;
    if (e.code === 'o' || e.code === 'i') {
      lines.push(JSON.stringify([t, e.code, decoders[e.code].decode(e.data, { stream: true })]));
    } else if (e.code === 'r') {
      lines.push(JSON.stringify([t, 'r', new TextDecoder().decode(e.data)]));
    } else {
      lines.push(JSON.stringify([t, 'm', new TextDecoder().decode(e.data)]));
    }
  }
  return `${lines.join('\n')}\n`;
}

// Drops terminal escape sequences so search sees what a person read.
const ANSI = /\u001b(?:\[[0-?]*[ -/]*[@-~]|\][^\u0007\u001b]*(?:\u0007|\u001b\\)|[@-Z\\-_])/g;

/** Output events whose text contains `query`, with their time offsets. */
export function search(events, query, limit = 50) {
  const q = query.toLowerCase();
  if (!q) return [];
  const hits = [];
  const dec = new TextDecoder();
  // A match may straddle events: keep a short tail of the previous text.
  let carry = '';
  for (const e of events) {
    if (e.code !== 'o') continue;
    const textPart = dec.decode(e.data, { stream: true }).replace(ANSI, '');
    const hay = (carry + textPart).toLowerCase();
    const at = hay.indexOf(q);
    if (at >= 0) {
      const lineStart = hay.lastIndexOf('\n', at) + 1;
      const lineEnd = hay.indexOf('\n', at);
      const context = (carry + textPart).slice(lineStart, lineEnd < 0 ? undefined : lineEnd).replace(/\r/g, '');
      hits.push({ time: e.tUs / 1e6, context });
      carry = '';
      if (hits.length >= limit) break;
    } else {
      carry = (carry + textPart).slice(-Math.max(0, q.length - 1));
    }
  }
  return hits;
}

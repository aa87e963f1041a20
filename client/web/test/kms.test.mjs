// The browser's session crypto against an agent simulated with node's own
// WebCrypto: key halves, nonce ‖ ciphertext ‖ tag layout, the challenge.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KmsSession, b64decode, b64encode } from '../src/kms.js';

const dataKey = () => Uint8Array.from({ length: 64 }, (_, i) => i * 3 + 1);
const key = (raw) => crypto.subtle.importKey('raw', raw, 'AES-GCM', false, ['encrypt', 'decrypt']);

async function agentSeal(raw, plain, nonce) {
  const ct = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv: nonce }, await key(raw), plain));
  return Uint8Array.from([...nonce, ...ct]);
}

async function agentOpen(raw, sealed) {
  return new Uint8Array(
    await crypto.subtle.decrypt({ name: 'AES-GCM', iv: sealed.subarray(0, 12) }, await key(raw), sealed.subarray(12)),
  );
}

test('opens agent→client with bytes 0..32 and seals with 32..64', async () => {
  const k = dataKey();
  const s = await KmsSession.fromDataKey(dataKey(), 'blob');
  const sealed = await agentSeal(k.subarray(0, 32), new TextEncoder().encode('EXIT_CODE: 3'), new Uint8Array(12).fill(7));
  assert.equal(new TextDecoder().decode(await s.decrypt(sealed)), 'EXIT_CODE: 3');
  const mine = await s.seal(new TextEncoder().encode('ls\r'));
  assert.equal(mine.length, 3 + 28);
  assert.equal(new TextDecoder().decode(await agentOpen(k.subarray(32), mine)), 'ls\r');
  // The wrong half does not open it.
  await assert.rejects(agentOpen(k.subarray(0, 32), mine));
});

test('answers the challenge and chunks input within one frame', async () => {
  const k = dataKey();
  const s = await KmsSession.fromDataKey(dataKey(), 'blob');
  const challenge = crypto.getRandomValues(new Uint8Array(64));
  const req = b64encode(await agentSeal(k.subarray(0, 32), challenge, crypto.getRandomValues(new Uint8Array(12))));
  const answer = await agentOpen(k.subarray(32), b64decode(await s.answerChallenge(req)));
  assert.deepEqual(answer, challenge);
  const chunks = await s.encryptChunks(new Uint8Array(3000));
  assert.ok(chunks.every((c) => c.length <= 1024));
  assert.equal(chunks.reduce((n, c) => n + c.length - 28, 0), 3000);
});

test('refuses a data key of the wrong size and a truncated payload', async () => {
  await assert.rejects(KmsSession.fromDataKey(new Uint8Array(32), 'b'), /32-byte/);
  const s = await KmsSession.fromDataKey(dataKey(), 'blob');
  await assert.rejects(s.decrypt(new Uint8Array(27)), /too short/);
});

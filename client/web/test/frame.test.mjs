// The browser's frame codec against the spec §1.1 vector, run by node's
// test runner (Node 20 has WebCrypto as globalThis.crypto).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeFrame, encodeFrame, MessageType, PayloadType, utf8 } from '../src/frame.js';

const VECTOR =
  '00000074696e7075745f73747265616d5f646174612020202020202020202020' +
  '20202020000000010000018bcfe5680000000000000000050000000000000000' +
  'a508b5f073f31b16dd01e56bff48483ed53ca1ea7dce87c11432052a8550ed26' +
  '15cf715ca843c89710ed83325b691cba00000003000000157b22636f6c73223a' +
  '38302c22726f7773223a32347d';

const hex = (b) => Buffer.from(b).toString('hex');

test('encodes the spec vector', async () => {
  const f = await encodeFrame({
    messageType: MessageType.Input,
    sequenceNumber: 5,
    messageId: 'dd01e56b-ff48-483e-a508-b5f073f31b16',
    payloadType: PayloadType.Size,
    payload: utf8('{"cols":80,"rows":24}'),
    createdDate: 1700000000000,
  });
  assert.equal(hex(f), VECTOR);
});

test('decodes the spec vector', async () => {
  const bytes = Buffer.from(VECTOR, 'hex');
  const f = await decodeFrame(new Uint8Array(bytes));
  assert.equal(f.messageType, 'input_stream_data');
  assert.equal(f.sequenceNumber, 5);
  assert.equal(f.messageId, 'dd01e56b-ff48-483e-a508-b5f073f31b16');
  assert.equal(f.payloadType, 3);
  assert.equal(Buffer.from(f.payload).toString(), '{"cols":80,"rows":24}');
});

test('rejects a changed payload, short frames and zero dates', async () => {
  const good = await encodeFrame({ messageType: MessageType.Output, payloadType: 1, payload: utf8('hi') });
  const bad = good.slice();
  bad[bad.length - 1] ^= 1;
  await assert.rejects(decodeFrame(bad), /digest/);
  await assert.rejects(decodeFrame(good.subarray(0, 119)), /shorter/);
  const zero = good.slice();
  zero.fill(0, 40, 48);
  await assert.rejects(decodeFrame(zero), /CreatedDate/);
  const hl = good.slice();
  new DataView(hl.buffer).setUint32(0, 100000);
  await assert.rejects(decodeFrame(hl), /header length/);
});

test('accepts NUL-padded message types', async () => {
  const f = await encodeFrame({ messageType: MessageType.Ack, flags: 3, payload: utf8('{}') });
  for (let i = 4 + 'acknowledge'.length; i < 36; i++) f[i] = 0;
  assert.equal((await decodeFrame(f)).messageType, 'acknowledge');
});

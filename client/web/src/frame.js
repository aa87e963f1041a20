// Data-channel frame codec (spec §1): 120-byte big-endian header, payload
// digest over the bytes as sent. SHA-256 comes from WebCrypto, so encode and
// verify are async.

export const HEADER_LEN = 120;
// A frame larger than this is refused before any copy (peer bytes are hostile).
export const MAX_FRAME = 1024 * 1024;

export const PayloadType = {
  Undefined: 0,
  Output: 1,
  Error: 2,
  Size: 3,
  Parameter: 4,
  HandshakeRequest: 5,
  HandshakeResponse: 6,
  HandshakeComplete: 7,
  EncChallengeRequest: 8,
  EncChallengeResponse: 9,
  Flag: 10,
  StdErr: 11,
  ExitCode: 12,
};

export const MessageType = {
  Input: 'input_stream_data',
  Output: 'output_stream_data',
  Ack: 'acknowledge',
  ChannelClosed: 'channel_closed',
  // Airlock gateways' warnings for the user (an idle session about to close).
  SessionNotice: 'airlock_session_notice',
  StartPublication: 'start_publication',
  PausePublication: 'pause_publication',
};

const enc = new TextEncoder();
const dec = new TextDecoder();

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
}

function uuidBytes(uuid) {
  const hex = uuid.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`bad uuid ${uuid}`);
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

function uuidString(b) {
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Encodes one frame; `payload` is a Uint8Array. */
export async function encodeFrame({
  messageType,
  sequenceNumber = 0,
  flags = 0,
  messageId = crypto.randomUUID(),
  payloadType = 0,
  payload = new Uint8Array(0),
  createdDate = Date.now(),
}) {
  const mt = enc.encode(messageType);
  if (mt.length > 32) throw new Error('message type longer than 32 bytes');
  const buf = new Uint8Array(HEADER_LEN + payload.length);
  const dv = new DataView(buf.buffer);
  dv.setUint32(0, 116);
  buf.fill(0x20, 4, 36);
  buf.set(mt, 4);
  dv.setUint32(36, 1);
  dv.setBigUint64(40, BigInt(createdDate));
  dv.setBigInt64(48, BigInt(sequenceNumber));
  dv.setBigUint64(56, BigInt(flags));
  // MessageId halves are swapped on the wire (spec §1.2).
  const id = uuidBytes(messageId);
  buf.set(id.subarray(8, 16), 64);
  buf.set(id.subarray(0, 8), 72);
  buf.set(await sha256(payload), 80);
  dv.setUint32(112, payloadType);
  dv.setUint32(116, payload.length);
  buf.set(payload, HEADER_LEN);
  return buf;
}

/** Decodes and validates one frame; throws on anything malformed. */
export async function decodeFrame(bytes) {
  if (!(bytes instanceof Uint8Array)) bytes = new Uint8Array(bytes);
  if (bytes.length < HEADER_LEN) throw new Error(`frame of ${bytes.length} bytes is shorter than its header`);
  if (bytes.length > MAX_FRAME) throw new Error(`frame of ${bytes.length} bytes is too large`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const hl = dv.getUint32(0);
  if (hl === 0 || hl + 4 > bytes.length || hl < 116) throw new Error(`bad header length ${hl}`);
  const messageType = dec
    .decode(bytes.subarray(4, 36))
    .replace(/^\0+|\0+$/g, '')
    .trim();
  if (!messageType) throw new Error('empty message type');
  const createdDate = Number(dv.getBigUint64(40));
  const sequenceNumber = Number(dv.getBigInt64(48));
  const flags = Number(dv.getBigUint64(56));
  const id = new Uint8Array(16);
  id.set(bytes.subarray(72, 80), 0);
  id.set(bytes.subarray(64, 72), 8);
  const digest = bytes.subarray(80, 112);
  const payloadType = dv.getUint32(112);
  const payloadLength = dv.getUint32(116);
  // The payload is everything after the header, as both stock readers do.
  const payload = bytes.slice(hl + 4);
  const publication =
    messageType === MessageType.StartPublication || messageType === MessageType.PausePublication;
  if (!publication) {
    if (createdDate === 0) throw new Error('zero CreatedDate');
    if (payloadLength !== 0) {
      const want = await sha256(payload);
      for (let i = 0; i < 32; i++) {
        if (want[i] !== digest[i]) throw new Error('payload digest mismatch');
      }
    }
  }
  return {
    messageType,
    createdDate,
    sequenceNumber,
    flags,
    messageId: uuidString(id),
    payloadType,
    payload,
  };
}

export function utf8(s) {
  return enc.encode(s);
}

export function text(b) {
  return dec.decode(b);
}

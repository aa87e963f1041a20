// End-to-end session encryption in the browser (spec §4.4): the browser asks
// KMS for a 64-byte data key with the user's own credentials, keeps the
// plaintext key in non-extractable WebCrypto keys, and seals/opens payloads
// with AES-256-GCM as nonce(12) ‖ ciphertext ‖ tag(16). The gateway relays
// only ciphertext.

export const CHUNK = 1024;
const NONCE = 12;
const TAG = 16;

export function b64encode(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

export function b64decode(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function aesKey(raw) {
  return crypto.subtle.importKey('raw', raw, { name: 'AES-GCM' }, false, ['encrypt', 'decrypt']);
}

export class KmsSession {
  static async create(api, { keyId, sessionId, target }) {
    const r = await api.kms('GenerateDataKey', {
      KeyId: keyId,
      NumberOfBytes: 64,
      EncryptionContext: { 'aws:ssm:SessionId': sessionId, 'aws:ssm:TargetId': target },
    });
    return KmsSession.fromDataKey(b64decode(r.Plaintext || ''), r.CiphertextBlob);
  }

  /** Keys from a 64-byte data key; the caller's copy is zeroed. */
  static async fromDataKey(plain, ciphertextBlob) {
    if (plain.length !== 64) throw new Error(`KMS returned a ${plain.length}-byte data key, not 64`);
    const s = new KmsSession();
    s.ciphertextBlob = ciphertextBlob;
    // 0..32 agent→client (we open), 32..64 client→agent (we seal).
    s.openKey = await aesKey(plain.subarray(0, 32));
    s.sealKey = await aesKey(plain.subarray(32, 64));
    plain.fill(0);
    return s;
  }

  async seal(bytes) {
    const nonce = crypto.getRandomValues(new Uint8Array(NONCE));
    const ct = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv: nonce }, this.sealKey, bytes));
    const out = new Uint8Array(NONCE + ct.length);
    out.set(nonce, 0);
    out.set(ct, NONCE);
    return out;
  }

  async decrypt(bytes) {
    if (bytes.length < NONCE + TAG) throw new Error('sealed payload too short');
    const nonce = bytes.subarray(0, NONCE);
    const pt = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: nonce }, this.openKey, bytes.subarray(NONCE));
    return new Uint8Array(pt);
  }

  /** Seals input in chunks that stay within one stock-size frame once sealed. */
  async encryptChunks(bytes) {
    const out = [];
    const step = CHUNK - NONCE - TAG;
    for (let i = 0; i < bytes.length; i += step) out.push(await this.seal(bytes.subarray(i, i + step)));
    return out;
  }

  async answerChallenge(challengeB64) {
    const plain = await this.decrypt(b64decode(challengeB64));
    return b64encode(await this.seal(plain));
  }
}

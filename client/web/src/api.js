// Signed calls to the gateway's SSM JSON API. The secret stays in this tab
// (sessionStorage); each request carries only a SigV4 signature.

import { AwsClient } from 'aws4fetch';

const STORE_KEY = 'airlock.credentials';

export class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
  toString() {
    return `${this.code}: ${this.message}`;
  }
}

export function loadCredentials() {
  try {
    const c = JSON.parse(sessionStorage.getItem(STORE_KEY) || 'null');
    return c && c.accessKeyId && c.secretAccessKey ? c : null;
  } catch {
    return null;
  }
}

export function saveCredentials(c) {
  sessionStorage.setItem(STORE_KEY, JSON.stringify(c));
}

export function clearCredentials() {
  sessionStorage.removeItem(STORE_KEY);
}

export class Api {
  constructor(creds, endpoint = location.origin) {
    this.creds = creds;
    this.endpoint = endpoint;
    this.region = creds.region;
    this.signers = new Map();
  }

  signer(service) {
    let s = this.signers.get(service);
    if (!s) {
      s = new AwsClient({
        accessKeyId: this.creds.accessKeyId,
        secretAccessKey: this.creds.secretAccessKey,
        sessionToken: this.creds.sessionToken || undefined,
        service,
        region: this.region,
        // SDK-style retries belong to the caller; show the first answer.
        retries: 0,
      });
      this.signers.set(service, s);
    }
    return s;
  }

  async call(service, target, body, path = '/') {
    let resp;
    try {
      resp = await this.signer(service).fetch(`${this.endpoint}${path}`, {
        method: 'POST',
        headers: {
          'content-type': 'application/x-amz-json-1.1',
          'x-amz-target': target,
        },
        body: JSON.stringify(body || {}),
        credentials: 'omit',
      });
    } catch (e) {
      throw new Error(`cannot reach the gateway: ${e.message}`);
    }
    const raw = await resp.text();
    let json = {};
    try {
      json = raw ? JSON.parse(raw) : {};
    } catch {
      json = {};
    }
    if (!resp.ok) {
      // botocore's rule: code after '#' and before ':'.
      const type = String(json.__type || `HTTP${resp.status}`);
      const code = type.split('#').pop().split(':')[0];
      throw new ApiError(code, json.message || json.Message || raw || resp.statusText, resp.status);
    }
    return json;
  }

  ssm(op, body) {
    return this.call('ssm', `AmazonSSM.${op}`, body);
  }

  kms(op, body) {
    return this.call('kms', `TrentService.${op}`, body);
  }

  /** Every page of a paginated SSM list. */
  async ssmAll(op, body, key, limit = 1000) {
    const out = [];
    let token;
    do {
      const r = await this.ssm(op, { ...body, ...(token ? { NextToken: token } : {}) });
      out.push(...(r[key] || []));
      token = r.NextToken;
    } while (token && out.length < limit);
    return out;
  }
}

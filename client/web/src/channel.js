// The data-channel client (spec §2–§3): sequence numbers, acks, RTO-driven
// retransmission, in-order delivery through a bounded reorder buffer, and
// reconnect with ResumeSession after a dropped socket. The gateway only
// relays frames; this end and the agent run the reliability layer.

import { decodeFrame, encodeFrame, MessageType, PayloadType, text, utf8 } from './frame.js';

export const CLIENT_VERSION = '1.2.0.0-airlock-web';
// Chunk size both stock ends use for stream data.
export const CHUNK = 1024;
// Bounds on what a peer can make us hold.
const MAX_REORDER = 10000;
const MAX_OUTGOING = 10000;
const TICK_MS = 100;
const MAX_RTO_MS = 1000;
const MAX_RETRIES = 5;
// The stock plugin gives up after this many resends of one message (~5 min).
const MAX_RESENDS = 3000;

function backoff(attempt) {
  const d0 = 100 + Math.floor(Math.random() * 100);
  const d = d0 * 2 ** Math.min(attempt, 16);
  return d > 5000 ? d0 : d;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * One session's data channel. Callbacks:
 *  onData(payloadType, Uint8Array) — in-order stream payloads
 *  onClosed(outputText|null)       — channel_closed from the gateway
 *  onNotice(text)                  — a gateway notice for the user (idle warning)
 *  onStatus(text)                  — connection state for the UI
 *  onFailed(message)               — gave up reconnecting
 */
export class DataChannel {
  constructor({ streamUrl, token, resume, onData, onClosed, onNotice, onStatus, onFailed }) {
    this.streamUrl = streamUrl;
    this.token = token;
    this.resume = resume;
    this.onData = onData;
    this.onClosed = onClosed;
    this.onNotice = onNotice || (() => {});
    this.onStatus = onStatus || (() => {});
    this.onFailed = onFailed || (() => {});
    this.clientId = crypto.randomUUID();
    this.outSeq = 0;
    this.expected = 0;
    this.outgoing = []; // {seq, bytes, firstSent, lastSent, resent}
    this.reorder = new Map();
    this.rtt = 100;
    this.rttvar = 0;
    this.rto = 200;
    this.ws = null;
    this.finished = false;
    this.reconnecting = false;
    // Frame decoding and encoding are async (WebCrypto); one chain keeps
    // them in arrival / submission order.
    this.inChain = Promise.resolve();
    this.outChain = Promise.resolve();
    this.timer = setInterval(() => this.tick(), TICK_MS);
  }

  async start() {
    await this.connect(this.token);
  }

  connect(token) {
    return new Promise((resolve, reject) => {
      let opened = false;
      const ws = new WebSocket(this.streamUrl);
      ws.binaryType = 'arraybuffer';
      ws.onopen = () => {
        opened = true;
        ws.send(
          JSON.stringify({
            MessageSchemaVersion: '1.0',
            RequestId: crypto.randomUUID(),
            TokenValue: token,
            ClientId: this.clientId,
            ClientVersion: CLIENT_VERSION,
          }),
        );
        this.ws = ws;
        // Whatever the peer has not acked may have been lost with the old socket.
        for (const m of this.outgoing) {
          ws.send(m.bytes);
          m.lastSent = performance.now();
        }
        this.onStatus('connected');
        resolve();
      };
      ws.onmessage = (ev) => {
        if (typeof ev.data === 'string') return;
        const bytes = new Uint8Array(ev.data);
        this.inChain = this.inChain.then(() => this.handle(bytes)).catch((e) => {
          console.warn('dropped frame:', e.message);
        });
      };
      ws.onclose = () => {
        if (this.ws === ws) this.ws = null;
        if (!opened) {
          reject(new Error('could not open the data channel'));
          return;
        }
        if (!this.finished) this.reconnect();
      };
      ws.onerror = () => {};
    });
  }

  async reconnect() {
    if (this.reconnecting || this.finished) return;
    this.reconnecting = true;
    this.onStatus('reconnecting');
    let last = 'no attempt made';
    try {
      for (let attempt = 0; attempt < MAX_RETRIES && !this.finished; attempt++) {
        await sleep(backoff(attempt));
        let token;
        try {
          token = await this.resume();
        } catch (e) {
          // An API refusal (e.g. the session ended) is final.
          if (e.code) {
            this.finish();
            this.onFailed(`${e.code}: ${e.message}`);
            return;
          }
          last = e.message;
          continue;
        }
        if (!token) {
          this.finish();
          this.onClosed('timed out');
          return;
        }
        try {
          // The original StreamUrl is reused, as the stock plugin does.
          await this.connect(token);
          return;
        } catch (e) {
          last = e.message;
        }
      }
      if (!this.finished) {
        this.finish();
        this.onFailed(`lost the connection: ${last}`);
      }
    } finally {
      this.reconnecting = false;
      // A socket that dropped again while we were finishing up was ignored
      // by the guard above; go round once more.
      if (!this.finished && !this.ws) this.reconnect();
    }
  }

  async handle(bytes) {
    const f = await decodeFrame(bytes);
    switch (f.messageType) {
      case MessageType.Ack:
        this.onAck(f);
        return;
      case MessageType.Output:
        await this.onStream(f);
        return;
      case MessageType.ChannelClosed: {
        let output = null;
        try {
          output = JSON.parse(text(f.payload)).Output || null;
        } catch {
          /* no reason given */
        }
        this.finish();
        this.onClosed(output);
        return;
      }
      case MessageType.SessionNotice: {
        let message = '';
        try {
          message = String(JSON.parse(text(f.payload)).Message || '');
        } catch {
          /* malformed: nothing to show */
        }
        // Peer text reaches a terminal: no control characters.
        message = message.replace(/[\u0000-\u001f\u007f]/g, ' ').trim();
        if (message) this.onNotice(message);
        return;
      }
      default:
        // start/pause_publication and anything unknown: nothing to do.
        return;
    }
  }

  onAck(f) {
    let ack;
    try {
      ack = JSON.parse(text(f.payload));
    } catch {
      return;
    }
    const seq = ack.AcknowledgedMessageSequenceNumber;
    const i = this.outgoing.findIndex((m) => m.seq === seq);
    if (i < 0) return;
    const [m] = this.outgoing.splice(i, 1);
    if (m.resent === 0) {
      const sample = performance.now() - m.firstSent;
      this.rttvar = 0.75 * this.rttvar + 0.25 * Math.abs(this.rtt - sample);
      this.rtt = 0.875 * this.rtt + 0.125 * sample;
      this.rto = Math.min(MAX_RTO_MS, this.rtt + Math.max(10, 4 * this.rttvar));
    }
  }

  async sendAck(f) {
    const payload = utf8(
      JSON.stringify({
        AcknowledgedMessageType: f.messageType,
        AcknowledgedMessageId: f.messageId,
        AcknowledgedMessageSequenceNumber: f.sequenceNumber,
        IsSequentialMessage: true,
      }),
    );
    const bytes = await encodeFrame({ messageType: MessageType.Ack, flags: 3, payload });
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
  }

  async onStream(f) {
    const seq = f.sequenceNumber;
    if (seq < this.expected) {
      // Our ack was lost; re-ack so the peer stops resending.
      await this.sendAck(f);
      return;
    }
    if (seq > this.expected) {
      if (this.reorder.size < MAX_REORDER && !this.reorder.has(seq)) {
        this.reorder.set(seq, f);
        await this.sendAck(f);
      }
      return;
    }
    await this.sendAck(f);
    this.expected++;
    await this.deliver(f);
    while (this.reorder.has(this.expected)) {
      const next = this.reorder.get(this.expected);
      this.reorder.delete(this.expected);
      this.expected++;
      await this.deliver(next);
    }
  }

  async deliver(f) {
    try {
      await this.onData(f.payloadType, f.payload);
    } catch (e) {
      console.warn('payload handler failed:', e);
    }
  }

  /** Queues one stream message; resolves once it is handed to the socket. */
  send(payloadType, payload) {
    if (this.finished) return Promise.resolve();
    if (this.outgoing.length >= MAX_OUTGOING) {
      return Promise.reject(new Error('too much unacknowledged input'));
    }
    const seq = this.outSeq++;
    this.outChain = this.outChain.then(async () => {
      const bytes = await encodeFrame({
        messageType: MessageType.Input,
        sequenceNumber: seq,
        payloadType,
        payload,
      });
      const now = performance.now();
      this.outgoing.push({ seq, bytes, firstSent: now, lastSent: now, resent: 0 });
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
    });
    return this.outChain;
  }

  /** Sends bytes as Output payloads of at most CHUNK bytes each. */
  sendInput(bytes) {
    let p = Promise.resolve();
    for (let i = 0; i < bytes.length; i += CHUNK) {
      p = this.send(PayloadType.Output, bytes.subarray(i, i + CHUNK));
    }
    return p;
  }

  tick() {
    const head = this.outgoing[0];
    if (!head || !this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const now = performance.now();
    if (now - head.lastSent > this.rto) {
      if (head.resent >= MAX_RESENDS) {
        this.finish();
        this.onFailed(`no acknowledgement from the agent after ${MAX_RESENDS} resends`);
        if (this.ws) this.ws.close(1000);
        return;
      }
      this.ws.send(head.bytes);
      head.lastSent = now;
      head.resent++;
    }
  }

  finish() {
    this.finished = true;
    clearInterval(this.timer);
  }

  /** Closes the socket without a reconnect (the session is over for us). */
  close() {
    this.finish();
    if (this.ws) this.ws.close(1000);
  }
}

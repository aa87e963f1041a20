// A shell session in the page: xterm.js on top of the data channel, the
// handshake answer, resize, copy/paste, exit code and channel_closed.

import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import { DataChannel, CLIENT_VERSION } from './channel.js';
import { PayloadType, text, utf8 } from './frame.js';
import { KmsSession } from './kms.js';

const SESSION_TYPES = ['Standard_Stream', 'InteractiveCommands', 'NonInteractiveCommands'];
const FEATURES = ['exit_code'];

/**
 * Runs one session in `container`. `ui` has setStatus(text, ended) and
 * showError(text).
 */
export async function runShell({ api, session, target, container, ui }) {
  const term = new Terminal({
    cursorBlink: true,
    convertEol: false,
    fontFamily: 'monospace',
    fontSize: 14,
    scrollback: 5000,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(container);
  fit.fit();

  let exitCode = null;
  let kms = null;
  let ended = false;
  const sid = session.SessionId;

  const dc = new DataChannel({
    streamUrl: session.StreamUrl,
    token: session.TokenValue,
    resume: async () => {
      const r = await api.ssm('ResumeSession', { SessionId: sid });
      return r.TokenValue || null;
    },
    onStatus: (s) => {
      if (!ended) ui.setStatus(s === 'connected' ? `Connected to ${target} (${sid})` : 'Connection lost; reconnecting…');
    },
    onData: async (type, payload) => {
      switch (type) {
        case PayloadType.Output:
        case PayloadType.StdErr:
          term.write(kms ? await kms.decrypt(payload) : payload);
          break;
        case PayloadType.ExitCode: {
          const plain = kms ? await kms.decrypt(payload) : payload;
          const m = /^\s*EXIT_CODE:\s*(-?\d+)\s*$/.exec(text(plain));
          if (m) exitCode = Number(m[1]);
          break;
        }
        case PayloadType.HandshakeRequest:
          await answerHandshake(JSON.parse(text(payload)));
          break;
        case PayloadType.EncChallengeRequest: {
          const req = JSON.parse(text(payload));
          const answer = await kms.answerChallenge(req.Challenge);
          await dc.send(PayloadType.EncChallengeResponse, utf8(JSON.stringify({ Challenge: answer })));
          break;
        }
        case PayloadType.HandshakeComplete: {
          const done = JSON.parse(text(payload));
          if (done.CustomerMessage) term.write(`${done.CustomerMessage}\r\n`);
          if (kms) ui.setEncrypted(true);
          break;
        }
        case PayloadType.Error:
          term.write(payload);
          break;
        default:
          break;
      }
    },
    onNotice: (message) => {
      term.write(`\r\n${message}\r\n`);
      ui.setStatus(message);
    },
    onClosed: (output) => {
      ended = true;
      const msg = output
        ? `SessionId: ${sid} : ${output}`
        : `Exiting session with sessionId: ${sid}.`;
      term.write(`\r\n\r\n${msg}\r\n`);
      ui.setStatus(
        exitCode === null ? `Session ended. ${msg}` : `Session ended with exit code ${exitCode}.`,
        true,
      );
      window.removeEventListener('resize', onWindowResize);
    },
    onFailed: (why) => {
      ended = true;
      ui.showError(why);
      ui.setStatus(`Session ${sid} lost.`, true);
    },
  });

  async function answerHandshake(req) {
    const processed = [];
    for (const a of req.RequestedClientActions || []) {
      const p = a.ActionParameters || {};
      switch (a.ActionType) {
        case 'SessionType':
          processed.push(
            SESSION_TYPES.includes(p.SessionType)
              ? { ActionType: 'SessionType', ActionStatus: 1, ActionResult: null, Error: '' }
              : { ActionType: 'SessionType', ActionStatus: 2, ActionResult: null, Error: `Unsupported session type ${p.SessionType}` },
          );
          break;
        case 'AirlockCapabilities': {
          const features = (p.Features || []).filter((f) => FEATURES.includes(f));
          processed.push({
            ActionType: 'AirlockCapabilities',
            ActionStatus: 1,
            ActionResult: { Features: features, MaxPayload: 1024 },
            Error: '',
          });
          break;
        }
        case 'KMSEncryption':
          try {
            kms = await KmsSession.create(api, {
              keyId: p.KMSKeyId,
              sessionId: sid,
              target,
            });
            processed.push({
              ActionType: 'KMSEncryption',
              ActionStatus: 1,
              ActionResult: { KMSCipherTextKey: kms.ciphertextBlob, KMSCipherTextHash: null },
              Error: '',
            });
          } catch (e) {
            kms = null;
            const why = e.code ? `${e.code}: ${e.message}` : e.message;
            ui.showError(`KMS encryption failed: ${why}`);
            processed.push({ ActionType: 'KMSEncryption', ActionStatus: 2, ActionResult: null, Error: why });
          }
          break;
        default:
          processed.push({ ActionType: a.ActionType, ActionStatus: 3, ActionResult: null, Error: '' });
      }
    }
    const resp = { ClientVersion: CLIENT_VERSION, ProcessedClientActions: processed, Errors: null };
    await dc.send(PayloadType.HandshakeResponse, utf8(JSON.stringify(resp)));
  }

  let lastSize = '';
  function sendSize() {
    const s = JSON.stringify({ cols: term.cols, rows: term.rows });
    if (s === lastSize || ended) return;
    lastSize = s;
    dc.send(PayloadType.Size, utf8(s)).catch(() => {});
  }
  function onWindowResize() {
    fit.fit();
  }

  term.onResize(sendSize);
  window.addEventListener('resize', onWindowResize);
  // Keystrokes are sealed asynchronously; one chain keeps them in order.
  let inputChain = Promise.resolve();
  term.onData((data) => {
    if (ended) return;
    const bytes = utf8(data);
    inputChain = inputChain
      .then(async () => {
        if (!kms) return dc.sendInput(bytes);
        for (const c of await kms.encryptChunks(bytes)) await dc.send(PayloadType.Output, c);
        return undefined;
      })
      .catch((e) => ui.showError(e.message));
  });
  // Ctrl+Shift+C / Ctrl+Shift+V copy and paste; plain Ctrl+C stays an interrupt.
  term.attachCustomKeyEventHandler((ev) => {
    if (ev.type !== 'keydown' || !ev.ctrlKey || !ev.shiftKey) return true;
    if (ev.code === 'KeyC') {
      copySelection();
      return false;
    }
    if (ev.code === 'KeyV') {
      pasteClipboard();
      return false;
    }
    return true;
  });

  async function copySelection() {
    const sel = term.getSelection();
    if (sel) await navigator.clipboard.writeText(sel).catch((e) => ui.showError(`Copy failed: ${e.message}`));
  }
  async function pasteClipboard() {
    try {
      term.paste(await navigator.clipboard.readText());
    } catch (e) {
      ui.showError(`Paste failed: ${e.message}`);
    }
  }

  ui.setStatus(`Connecting to ${target}…`);
  try {
    await dc.start();
  } catch (e) {
    ended = true;
    ui.showError(e.message);
    ui.setStatus('Could not connect.', true);
  }
  sendSize();
  term.focus();

  return {
    term,
    channel: dc,
    copy: copySelection,
    paste: pasteClipboard,
    get exitCode() {
      return exitCode;
    },
    get ended() {
      return ended;
    },
    dispose() {
      window.removeEventListener('resize', onWindowResize);
      dc.close();
      term.dispose();
    },
  };
}

// The console's pages: sign-in, instances, terminal, sessions.

import './nonce.js';
import '@xterm/xterm/css/xterm.css';
import './style.css';
import { Api, clearCredentials, loadCredentials, saveCredentials } from './api.js';
import { clear, fmtTime, h } from './dom.js';
import { runShell } from './shell.js';
import { playerPage, recordingsPage } from './playback.js';

const state = {
  config: { region: 'us-east-1' },
  api: null,
  shell: null,
  player: null,
};

const $ = (id) => document.getElementById(id);

function showError(e) {
  const el = $('error');
  if (!e) {
    el.hidden = true;
    el.textContent = '';
    return;
  }
  el.textContent = e.code ? `${e.code}: ${e.message}` : String(e.message || e);
  el.hidden = false;
}

function setMain(...children) {
  const main = clear($('main'));
  main.append(...children);
  return main;
}

function leaveShell() {
  if (state.shell) {
    state.shell.dispose();
    state.shell = null;
  }
}

// --- sign-in ---------------------------------------------------------------

async function signInFromLink() {
  // A link made by `airlock console` carries temporary credentials in the
  // fragment, which browsers never send to a server.
  const m = /^#\/signin\?(.*)$/.exec(location.hash);
  if (!m) return false;
  const q = new URLSearchParams(m[1]);
  const id = q.get('AccessKeyId');
  const secret = q.get('SecretAccessKey');
  if (!id || !secret) return false;
  saveCredentials({
    accessKeyId: id,
    secretAccessKey: secret,
    sessionToken: q.get('SessionToken') || '',
    region: q.get('Region') || state.config.region,
  });
  history.replaceState(null, '', `${location.pathname}#/instances`);
  return true;
}

function signInPage() {
  $('nav').hidden = true;
  const form = h(
    'form',
    { class: 'signin', id: 'signin-form', autocomplete: 'off' },
    h('label', { for: 'access-key-id' }, 'Access key ID'),
    h('input', { id: 'access-key-id', name: 'access-key-id', required: true, spellcheck: 'false' }),
    h('label', { for: 'secret-access-key' }, 'Secret access key'),
    h('input', { id: 'secret-access-key', name: 'secret-access-key', type: 'password', required: true }),
    h('label', { for: 'session-token' }, 'Session token (optional)'),
    h('input', { id: 'session-token', name: 'session-token', type: 'password' }),
    h('label', { for: 'region' }, 'Region'),
    h('input', { id: 'region', name: 'region', value: state.config.region, required: true }),
    h('span'),
    h('button', { type: 'submit', id: 'signin' }, 'Sign in'),
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    showError(null);
    const creds = {
      accessKeyId: $('access-key-id').value.trim(),
      secretAccessKey: $('secret-access-key').value.trim(),
      sessionToken: $('session-token').value.trim(),
      region: $('region').value.trim(),
    };
    // Check the key with a harmless signed call before keeping it.
    try {
      await new Api(creds).ssm('DescribeInstanceInformation', { MaxResults: 5 });
    } catch (e) {
      showError(e);
      return;
    }
    saveCredentials(creds);
    location.hash = '#/instances';
    route();
  });
  setMain(
    h('h2', {}, 'Sign in'),
    h('p', { class: 'muted' }, 'The secret stays in this tab (sessionStorage); requests carry only SigV4 signatures.'),
    form,
  );
}

// --- instances ---------------------------------------------------------------

function parseTagFilter(s) {
  const t = s.trim();
  if (!t) return null;
  const i = t.indexOf('=');
  return i < 0 ? { key: t, value: null } : { key: t.slice(0, i).trim(), value: t.slice(i + 1).trim() };
}

async function instancesPage() {
  const filterInput = h('input', { id: 'tag-filter', placeholder: 'tag filter: Key or Key=Value', size: 30 });
  const docInput = h('input', { id: 'document', value: 'SSM-SessionManagerRunShell', size: 32 });
  const tbody = h('tbody', { id: 'instances-body' });
  const table = h(
    'table',
    { id: 'instances' },
    h('thead', {}, h('tr', {}, ['Instance', 'Name', 'Ping status', 'Platform', 'Agent version', 'Tags', ''].map((t) => h('th', {}, t)))),
    tbody,
  );
  const refresh = h('button', { type: 'button', id: 'refresh' }, 'Refresh');
  setMain(
    h('div', { class: 'toolbar' }, h('h2', { class: 'grow' }, 'Managed instances'), filterInput, h('label', { for: 'document' }, 'Document'), docInput, refresh),
    table,
  );
  let all = [];
  const render = () => {
    clear(tbody);
    const f = parseTagFilter(filterInput.value);
    const rows = all.filter(
      ({ tags }) => !f || tags.some((t) => t.Key === f.key && (f.value === null || t.Value === f.value)),
    );
    if (!rows.length) {
      tbody.append(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, all.length ? 'No instance matches the filter.' : 'No managed instances.')));
    }
    for (const { info, tags } of rows) {
      const start = h('button', { type: 'button', class: 'start-shell', 'data-instance': info.InstanceId }, 'Start session');
      start.addEventListener('click', () => startSession(info.InstanceId, docInput.value.trim()));
      tbody.append(
        h(
          'tr',
          { 'data-instance': info.InstanceId },
          h('td', {}, info.InstanceId),
          h('td', {}, info.ComputerName || info.Name || ''),
          h('td', { class: info.PingStatus }, info.PingStatus || ''),
          h('td', {}, [info.PlatformName, info.PlatformVersion].filter(Boolean).join(' ') || info.PlatformType || ''),
          h('td', {}, info.AgentVersion || ''),
          h('td', {}, tags.map((t) => h('span', { class: 'tag' }, `${t.Key}=${t.Value}`))),
          h('td', {}, start),
        ),
      );
    }
  };
  const load = async () => {
    showError(null);
    try {
      const list = await state.api.ssmAll('DescribeInstanceInformation', { MaxResults: 50 }, 'InstanceInformationList');
      all = await Promise.all(
        list.map(async (info) => {
          let tags = [];
          try {
            const r = await state.api.ssm('ListTagsForResource', { ResourceType: 'ManagedInstance', ResourceId: info.InstanceId });
            tags = r.TagList || [];
          } catch {
            // Tags are decoration; a refusal here must not hide the instance.
          }
          return { info, tags };
        }),
      );
      render();
    } catch (e) {
      showError(e);
    }
  };
  filterInput.addEventListener('input', render);
  refresh.addEventListener('click', load);
  await load();
}

// --- terminal ----------------------------------------------------------------

async function startSession(target, document) {
  showError(null);
  let session;
  try {
    const body = { Target: target };
    if (document && document !== 'SSM-SessionManagerRunShell') body.DocumentName = document;
    session = await state.api.ssm('StartSession', body);
  } catch (e) {
    showError(e);
    return;
  }
  history.pushState(null, '', `#/terminal/${encodeURIComponent(session.SessionId)}`);
  await terminalPage(target, session);
}

async function terminalPage(target, session) {
  leaveShell();
  const status = h('span', { id: 'term-status', class: 'grow' }, '');
  const enc = h('span', { id: 'term-encrypted', class: 'tag', hidden: true }, 'end-to-end encrypted');
  const copy = h('button', { type: 'button', id: 'copy' }, 'Copy');
  const paste = h('button', { type: 'button', id: 'paste' }, 'Paste');
  const terminate = h('button', { type: 'button', id: 'terminate' }, 'Terminate');
  const container = h('div', { id: 'terminal' });
  setMain(h('div', { class: 'toolbar' }, status, enc, copy, paste, terminate), container);
  const ui = {
    setStatus: (t, ended) => {
      status.textContent = t;
      status.classList.toggle('ended', !!ended);
      if (ended) terminate.disabled = true;
    },
    setEncrypted: (on) => {
      enc.hidden = !on;
    },
    showError,
  };
  const shell = await runShell({ api: state.api, session, target, container, ui });
  state.shell = shell;
  copy.addEventListener('click', () => shell.copy());
  paste.addEventListener('click', () => shell.paste());
  terminate.addEventListener('click', async () => {
    try {
      await state.api.ssm('TerminateSession', { SessionId: session.SessionId });
    } catch (e) {
      showError(e);
    }
  });
}

// --- sessions ----------------------------------------------------------------

function sessionTable(id, sessions, active) {
  const head = ['Session', 'Target', 'Status', 'Owner', 'Started', 'Ended', 'Document', ''];
  const body = h('tbody');
  for (const s of sessions) {
    const actions = h('td');
    if (active) {
      const b = h('button', { type: 'button', class: 'terminate', 'data-session': s.SessionId }, 'Terminate');
      b.addEventListener('click', async () => {
        try {
          await state.api.ssm('TerminateSession', { SessionId: s.SessionId });
          await sessionsPage();
        } catch (e) {
          showError(e);
        }
      });
      actions.append(b);
    }
    body.append(
      h(
        'tr',
        { 'data-session': s.SessionId },
        h('td', { class: 'id' }, s.SessionId),
        h('td', { class: 'id' }, s.Target || ''),
        h('td', {}, s.Status || ''),
        h('td', { class: 'id' }, s.Owner || ''),
        h('td', { class: 'time' }, fmtTime(s.StartDate)),
        h('td', { class: 'time' }, fmtTime(s.EndDate)),
        h('td', {}, s.DocumentName || ''),
        actions,
      ),
    );
  }
  if (!sessions.length) body.append(h('tr', {}, h('td', { colspan: head.length, class: 'muted' }, 'None.')));
  return h('table', { id }, h('thead', {}, h('tr', {}, head.map((t) => h('th', {}, t)))), body);
}

async function sessionsPage() {
  showError(null);
  const refresh = h('button', { type: 'button', id: 'refresh-sessions' }, 'Refresh');
  refresh.addEventListener('click', sessionsPage);
  let active = [];
  let history = [];
  try {
    [active, history] = await Promise.all([
      state.api.ssmAll('DescribeSessions', { State: 'Active', MaxResults: 200 }, 'Sessions'),
      state.api.ssmAll('DescribeSessions', { State: 'History', MaxResults: 200 }, 'Sessions', 200),
    ]);
  } catch (e) {
    showError(e);
  }
  setMain(
    h('div', { class: 'toolbar' }, h('h2', { class: 'grow' }, 'Active sessions'), refresh),
    sessionTable('active-sessions', active, true),
    h('h2', {}, 'History'),
    sessionTable('history-sessions', history, false),
  );
}

// --- routing -----------------------------------------------------------------

async function route() {
  const creds = loadCredentials();
  const hash = location.hash || '#/instances';
  if (!creds) {
    leaveShell();
    signInPage();
    return;
  }
  state.api = new Api(creds);
  $('nav').hidden = false;
  $('whoami').textContent = creds.accessKeyId;
  if (hash.startsWith('#/terminal/') && state.shell) return;
  leaveShell();
  if (state.player) {
    state.player.dispose();
    state.player = null;
  }
  if (hash.startsWith('#/sessions')) await sessionsPage();
  else if (hash.startsWith('#/recordings/')) {
    const sessionId = decodeURIComponent(hash.slice('#/recordings/'.length));
    state.player = await playerPage({ api: state.api, sessionId, setMain, showError });
  } else if (hash.startsWith('#/recordings')) {
    await recordingsPage({
      api: state.api,
      setMain,
      showError,
      open: (sid) => {
        location.hash = `#/recordings/${encodeURIComponent(sid)}`;
      },
    });
  } else await instancesPage();
}

async function boot() {
  try {
    const r = await fetch('config.json', { credentials: 'omit' });
    if (r.ok) Object.assign(state.config, await r.json());
  } catch {
    // Defaults stand.
  }
  $('signout').addEventListener('click', () => {
    leaveShell();
    clearCredentials();
    state.api = null;
    location.hash = '#/signin';
    route();
  });
  await signInFromLink();
  window.addEventListener('hashchange', route);
  await route();
}

boot();

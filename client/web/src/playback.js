// Recordings page and player: asciinema-player fed with the asciicast this
// tab decrypted; search hits seek the player to their time offset.

import * as AsciinemaPlayer from 'asciinema-player';
import 'asciinema-player/dist/bundle/asciinema-player.css';
import { clear, fmtTime, h } from './dom.js';
import { loadRecording, recordingsCall, search, toAsciicast } from './recording.js';

export async function recordingsPage({ api, setMain, showError, open }) {
  showError(null);
  let list = [];
  try {
    list = (await recordingsCall(api, { Action: 'List' })).Recordings || [];
  } catch (e) {
    showError(e);
  }
  const body = h('tbody');
  for (const r of list) {
    const play = h('button', { type: 'button', class: 'play', 'data-session': r.SessionId }, 'Play');
    play.addEventListener('click', () => open(r.SessionId));
    body.append(
      h(
        'tr',
        { 'data-session': r.SessionId },
        h('td', { class: 'id' }, r.SessionId),
        h('td', { class: 'id' }, r.Target || ''),
        h('td', { class: 'id' }, r.Owner || ''),
        h('td', { class: 'time' }, fmtTime(r.StartDate)),
        h('td', {}, String(r.Chunks ?? '')),
        h('td', {}, r.Complete ? 'complete' : 'in progress'),
        h('td', {}, play),
      ),
    );
  }
  if (!list.length) body.append(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No recordings.')));
  setMain(
    h('h2', {}, 'Recordings'),
    h(
      'table',
      { id: 'recordings' },
      h('thead', {}, h('tr', {}, ['Session', 'Target', 'Owner', 'Started', 'Chunks', 'State', ''].map((t) => h('th', {}, t)))),
      body,
    ),
  );
}

export async function playerPage({ api, sessionId, setMain, showError }) {
  showError(null);
  const status = h('span', { id: 'rec-status', class: 'grow' }, `Loading ${sessionId}…`);
  setMain(h('div', { class: 'toolbar' }, status));
  let rec;
  try {
    rec = await loadRecording(api, sessionId);
  } catch (e) {
    status.textContent = 'Could not open the recording.';
    showError(e);
    return null;
  }
  const cast = toAsciicast(rec.header, rec.events);
  status.textContent = rec.verified
    ? `${sessionId}: ${rec.events.length} events, hash chain verified${rec.complete ? '' : ' (recording not finished)'}`
    : `${sessionId}: integrity problems: ${rec.problems.join('; ')}`;
  status.classList.toggle('bad', !rec.verified);

  const speed = h(
    'select',
    { id: 'speed' },
    ['0.5', '1', '2', '4', '8'].map((s) => h('option', { value: s, selected: s === '1' }, `${s}×`)),
  );
  const query = h('input', { id: 'search', placeholder: 'search output', size: 24 });
  const go = h('button', { type: 'submit', id: 'search-go' }, 'Search');
  const time = h('span', { id: 'player-time', class: 'muted' }, '0.000 s');
  const hitsBox = h('div', { id: 'hits', class: 'hits' });
  const holder = h('div', { id: 'player' });
  const form = h('form', { class: 'toolbar', id: 'search-form' }, h('label', { for: 'speed' }, 'Speed'), speed, query, go, time);
  setMain(h('div', { class: 'toolbar' }, status), form, hitsBox, holder);

  let player = null;
  const showTime = async () => {
    if (player) time.textContent = `${(await player.getCurrentTime()).toFixed(3)} s`;
  };
  const mount = async (startAt = 0, autoPlay = false) => {
    if (player) player.dispose();
    clear(holder);
    player = AsciinemaPlayer.create({ data: cast }, holder, {
      speed: Number(speed.value),
      startAt,
      autoPlay,
      preload: true,
      fit: 'width',
    });
    player.addEventListener('pause', showTime);
    player.addEventListener('ended', showTime);
  };
  speed.addEventListener('change', async () => {
    const at = player ? await player.getCurrentTime() : 0;
    await mount(at, true);
  });
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    clear(hitsBox);
    const hits = search(rec.events, query.value);
    if (!hits.length) hitsBox.append(h('span', { class: 'muted' }, 'No match.'));
    for (const hit of hits) {
      const b = h('button', { type: 'button', class: 'hit', 'data-time': hit.time.toFixed(3) }, `${hit.time.toFixed(2)} s — ${hit.context.slice(0, 80)}`);
      b.addEventListener('click', async () => {
        await player.seek(hit.time);
        await showTime();
      });
      hitsBox.append(b);
    }
  });
  await mount();
  return {
    dispose: () => player && player.dispose(),
  };
}

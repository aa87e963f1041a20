// Tiny DOM helpers: every piece of server data goes through textContent,
// never innerHTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function fmtTime(v) {
  if (v === undefined || v === null || v === '') return '';
  const n = typeof v === 'number' ? v * 1000 : Date.parse(v);
  return Number.isFinite(n) ? new Date(n).toISOString().replace('T', ' ').slice(0, 19) : String(v);
}

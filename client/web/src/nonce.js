// xterm.js (and the player) add <style> elements at run time. Rather than
// allow every inline style, the gateway sends a per-response nonce in the CSP
// and in this page's meta tag; style elements created by this bundle carry it.
const meta = document.querySelector('meta[name="airlock-style-nonce"]');
const nonce = meta ? meta.getAttribute('content') : '';
if (nonce && !nonce.startsWith('__')) {
  const create = Document.prototype.createElement;
  Document.prototype.createElement = function createElement(tag, options) {
    const el = create.call(this, tag, options);
    if (String(tag).toLowerCase() === 'style') el.nonce = nonce;
    return el;
  };
}

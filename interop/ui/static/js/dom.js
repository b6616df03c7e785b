// Small DOM and formatting helpers (no framework): elements are built with h(), never from HTML strings, so
// nothing a server returns is ever parsed as markup.

export const $ = (id) => document.getElementById(id);

/** h('td', {class: 'x', dataset: {id: 1}, style: {width: '4%'}, onclick: f}, child, 'text', [more]) */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'style') for (const [sk, sv] of Object.entries(v)) el.style.setProperty(sk, sv);
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'text') el.textContent = v;
      else el.setAttribute(k, v === true ? '' : v);
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replace the children of el. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function show(el, visible) {
  el.hidden = !visible;
}

/** "4 min", "3 h", "2 d" since iso. */
export function age(iso, now = Date.now()) {
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

export const pct = (p) => `${(p * 100).toFixed(p >= 0.995 || p < 0.005 ? 0 : 1).replace(/\.0$/, '')}%`;
export const fixed = (p, n = 2) => Number(p).toFixed(n);

export function humanize(name) {
  const s = String(name).replace(/[_-]+/g, ' ');
  return s.charAt(0).toUpperCase() + s.slice(1);
}

export const STATUS_LABEL = {
  preliminary: 'Pending', final: 'Final', amended: 'Amended', cancelled: 'Rejected',
  'entered-in-error': 'Entered in error', building: 'Building', failed: 'Failed',
};

export function dateTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString(undefined, {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit'});
}

export const nextFrame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));

/** Say something to screen readers. */
export function announce(text) {
  const live = $('live');
  live.textContent = '';
  requestAnimationFrame(() => { live.textContent = text; });
}

// The worklist: pending AI results, stat first then oldest first (the reports API's order), with filters and
// counts. Rows are loaded a page at a time; selection and paging never reload the page.
import { $, age, announce, dateTime, fill, h, humanize, STATUS_LABEL } from './dom.js';
import { getJSON, query } from './api.js';

const PAGE = 50;
const MODALITIES_KEY = 'worklist.app_modalities'; // last seen app -> modalities (no patient data)
const ALL_STATES = 'preliminary,final,amended,cancelled,entered-in-error,building,failed';

export const list = {
  rows: [],
  selected: -1,
  openId: null,
  filters: { status: 'preliminary', app: '', modality: '', patient: '' },
  /** EHR launch: the launch patient's identifier values (instead of the patient filter). */
  patients: null,
  patientLabel: '',
  counts: null,
  more: false, // another page may follow (single query only)
  generation: 0,
};

let onOpen = () => {};
export function onRowOpen(f) { onOpen = f; }

// -- queries --------------------------------------------------------------------------------------------

function plans() {
  const f = list.filters;
  let apps = [f.app || undefined];
  if (f.modality) {
    const byApp = list.counts?.app_modalities || {};
    const withModality = Object.keys(byApp).filter((a) => byApp[a].includes(f.modality));
    apps = f.app ? withModality.filter((a) => a === f.app) : withModality;
  }
  const patients = list.patients ? list.patients : [f.patient.trim() || undefined];
  return apps.flatMap((app) => patients.map((patient) => ({ status: f.status || undefined, app, patient_id: patient })));
}

const order = (a, b) => ((a.priority === 'stat' ? 0 : 1) - (b.priority === 'stat' ? 0 : 1))
  || (Date.parse(a.created_at) - Date.parse(b.created_at)) || (a.id - b.id);

async function fetchRows(offset) {
  const ps = plans();
  if (ps.length === 0) return { rows: [], more: false };
  if (ps.length === 1) {
    const rows = await getJSON(`/api/reports${query({ ...ps[0], limit: PAGE, offset })}`);
    return { rows, more: rows.length === PAGE };
  }
  // Several apps (a modality several apps read) or several identifiers of the launch patient: merged here.
  const parts = await Promise.all(ps.map((p) => getJSON(`/api/reports${query({ ...p, limit: 1000 })}`)));
  const seen = new Set();
  const rows = parts.flat().filter((r) => !seen.has(r.id) && seen.add(r.id)).sort(order);
  return { rows, more: false };
}

export async function loadCounts() {
  const f = list.filters;
  const patient = list.patients ? (list.patients.length === 1 ? list.patients[0] : undefined) : f.patient.trim();
  list.counts = await getJSON(`/api/worklist/counts${query({ status: f.status || ALL_STATES, patient_id: patient })}`);
  try { sessionStorage.setItem(MODALITIES_KEY, JSON.stringify(list.counts.app_modalities)); } catch { /* full */ }
  renderCounts();
}

/** Reload the list from the first page (filters changed, or a verdict moved a row). */
export async function reload({ keepSelection = true } = {}) {
  const generation = ++list.generation;
  const selectedId = keepSelection ? list.rows[list.selected]?.id : null;
  $('list-state').textContent = 'Loading…';
  // The rows first, then the counts: on a busy server the list the reader waits for is not slowed by them.
  // The modality filter needs the app -> modality map first.
  if (list.filters.modality && !list.counts) await loadCounts();
  const { rows, more } = await fetchRows(0);
  if (generation !== list.generation) return false; // a newer reload is under way
  list.rows = rows;
  list.more = more;
  renderRows();
  const keep = rows.findIndex((r) => r.id === selectedId);
  select(keep >= 0 ? keep : (rows.length ? 0 : -1), { scroll: false });
  loadCounts().catch(() => {});
  return true;
}

/** Load the next page (when the reader gets near the end). */
export async function loadMore() {
  if (!list.more || list.loadingMore) return;
  list.loadingMore = true;
  const generation = list.generation;
  try {
    const { rows, more } = await fetchRows(list.rows.length);
    if (generation !== list.generation) return;
    const known = new Set(list.rows.map((r) => r.id));
    const fresh = rows.filter((r) => !known.has(r.id));
    list.rows.push(...fresh);
    list.more = more && fresh.length > 0;
    $('rows').append(...fresh.map(rowElement));
    renderState();
  } finally {
    list.loadingMore = false;
  }
}

// -- rendering ------------------------------------------------------------------------------------------

function knownModalities() {
  if (list.counts) return list.counts.app_modalities;
  try { return JSON.parse(sessionStorage.getItem(MODALITIES_KEY) || '{}'); } catch { return {}; }
}

export function modalityOf(app) {
  const ms = knownModalities()[app];
  if (!ms || !ms.length) return '';
  return ms.map((m) => (m === 'labs' ? 'Labs' : m)).join('/');
}

function rowElement(r) {
  const tr = h('tr', { dataset: { id: r.id }, 'aria-selected': 'false', class: r.priority === 'stat' ? 'stat' : null,
    onclick: () => { select(list.rows.findIndex((x) => x.id === r.id)); onOpen(); } },
  h('td', null, r.priority === 'stat' ? h('span', { class: 'badge stat', title: 'Critical finding: read first' }, 'STAT')
    : h('span', { class: 'routine' }, 'routine')),
  h('td', { class: 'age', title: dateTime(r.created_at), dataset: { created: r.created_at } }, age(r.created_at)),
  h('td', { class: 'patient' }, r.patient_id || '—'),
  h('td', { class: 'app' }, h('span', { class: 'modality' }, modalityOf(r.app) || '—'), ' · ', r.app),
  h('td', { class: 'crit' }, r.critical.length ? r.critical.map(humanize).join(', ') : h('span', { class: 'muted' }, '—')),
  h('td', { class: `status s-${r.status}` }, STATUS_LABEL[r.status] || r.status));
  return tr;
}

export function renderRows() {
  fill($('rows'), list.rows.map(rowElement));
  renderState();
}

function renderState() {
  const n = list.rows.length;
  const total = list.counts?.total;
  let text = '';
  if (n === 0) text = 'Nothing here: no result matches these filters.';
  else if (list.more) text = `Showing ${n} of ${total ?? 'more'}; more load as you go.`;
  $('list-state').textContent = text;
  $('list-state').hidden = !text;
}

function option(value, label, selected) {
  return h('option', { value, selected: selected ? true : null }, label);
}

export function renderCounts() {
  const c = list.counts;
  if (!c) return;
  const f = list.filters;
  const bits = [h('span', { class: 'count' }, h('b', null, String(c.total)), ' ', f.status === 'preliminary' ? 'pending' : 'shown')];
  if (c.priority.stat) bits.push(h('span', { class: 'count stat-count' }, h('b', null, String(c.priority.stat)), ' stat'));
  for (const [app, n] of Object.entries(c.app)) bits.push(h('span', { class: 'count' }, `${app} ${n}`));
  if (list.patientLabel) bits.push(h('span', { class: 'count context' }, list.patientLabel));
  fill($('counts'), bits);
  // Filter options with their counts (the current choice stays even at zero).
  const apps = new Set([...Object.keys(c.app), ...Object.keys(c.app_modalities)]);
  if (f.app) apps.add(f.app);
  fill($('f-app'), option('', 'All', !f.app), [...apps].sort().map((a) => option(a, `${a} (${c.app[a] || 0})`, a === f.app)));
  const mods = new Set(Object.keys(c.modality));
  if (f.modality) mods.add(f.modality);
  fill($('f-modality'), option('', 'All', !f.modality),
    [...mods].sort().map((m) => option(m, `${m === 'labs' ? 'Labs only' : m} (${c.modality[m] || 0})`, m === f.modality)));
  const s = c.status;
  const labels = { preliminary: `Pending (${s.preliminary})`, 'final,amended': `Signed (${s.final + s.amended})`,
    'cancelled,entered-in-error': `Rejected (${s.cancelled + s['entered-in-error']})`, '': 'All' };
  for (const o of $('f-status').options) if (o.value in labels) o.textContent = labels[o.value];
  // The modality column needs the app map, which may arrive after the rows.
  for (const tr of $('rows').children) {
    const r = list.rows.find((x) => String(x.id) === tr.dataset.id);
    const cell = tr.querySelector('.modality');
    if (r && cell) cell.textContent = modalityOf(r.app) || '—';
  }
}

export function refreshAges() {
  const now = Date.now();
  for (const td of document.querySelectorAll('#rows td.age')) td.textContent = age(td.dataset.created, now);
}

// -- selection --------------------------------------------------------------------------------------------

export function select(index, { scroll = true } = {}) {
  const rows = $('rows').children;
  if (list.selected >= 0 && rows[list.selected]) {
    rows[list.selected].setAttribute('aria-selected', 'false');
  }
  list.selected = index;
  const tr = rows[index];
  if (tr) {
    tr.setAttribute('aria-selected', 'true');
    if (scroll) tr.scrollIntoView({ block: 'nearest' });
  }
  if (index >= list.rows.length - 10) loadMore().catch(() => {});
}

export function markOpen(id) {
  list.openId = id;
  for (const tr of $('rows').children) tr.classList.toggle('open', tr.dataset.id === String(id));
}

export function move(delta) {
  if (!list.rows.length) return false;
  const i = Math.min(list.rows.length - 1, Math.max(0, list.selected + delta));
  if (i === list.selected) return false;
  select(i);
  return true;
}

export const selectedRow = () => list.rows[list.selected] || null;
export const rowAt = (i) => list.rows[i] || null;

/** Take report `id` out of the list (a verdict moved it out of the filter); the row after it is selected. */
export function drop(id) {
  const i = list.rows.findIndex((r) => r.id === id);
  if (i < 0) return;
  list.rows.splice(i, 1);
  $('rows').children[i]?.remove();
  list.selected = -1;
  select(Math.min(i, list.rows.length - 1), { scroll: true });
  renderState();
  announce(`${list.rows.length} left in the worklist`);
}

/** Update one row in place (its status changed but it still matches the filter). */
export function replaceRow(r) {
  const i = list.rows.findIndex((x) => x.id === r.id);
  if (i < 0) return;
  list.rows[i] = r;
  const tr = rowElement(r);
  $('rows').children[i].replaceWith(tr);
  if (list.selected === i) tr.setAttribute('aria-selected', 'true');
  tr.classList.toggle('open', list.openId === r.id);
}

export function matchesStatus(status) {
  const s = list.filters.status;
  return !s || s.split(',').includes(status);
}

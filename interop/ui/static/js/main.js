// The worklist page: sign in (SMART), list, open cases, give verdicts; all without reloading the page.
//
// Timings the page keeps (User Timing, read by tests and bench/worklist.py): the mark "worklist-rendered" when
// the first rows are on screen, and a "case-shown" measure from the key press (or click) to the frame after a
// case is fully shown, its image and overlay included. body[data-case-id] names the case shown and
// body[data-ready-id] the next case once it is loaded ahead.
import * as auth from './auth.js';
import { onAuthLost, useSession } from './api.js';
import { forgetCase, loadCase, viewportFor } from './cases.js';
import * as cv from './caseview.js';
import { $, announce, fill, h, humanize, nextFrame, show, STATUS_LABEL } from './dom.js';
import { bindKeys } from './keys.js';
import * as wl from './worklist.js';

const app = { session: null, opening: 0, opened: -1 };

// -- banner (sign-in problems, errors) -------------------------------------------------------------------

function banner(message, ...actions) {
  const el = $('banner');
  fill(el, h('span', null, message), actions);
  show(el, Boolean(message));
}

function signInAgain(message) {
  const buttons = [h('button', { type: 'button', class: 'primary', onclick: () => { auth.forget(); auth.authorizeHere(); } },
    'Sign in at this node')];
  if (app.session?.fromEhr) message += ' Launch the worklist again from your EHR, or sign in here.';
  banner(message, buttons);
  $('list-state').textContent = '';
}

// -- cases -------------------------------------------------------------------------------------------------

function showCasePane(visible) {
  show($('case'), visible);
  $('layout').classList.toggle('has-case', visible);
}

function position(index) {
  return `${index + 1} of ${wl.list.rows.length}${wl.list.more ? '+' : ''}`;
}

/** Open the case at list index `index`; `start` (ms since navigation) starts the case-shown clock. */
async function openAt(index, start = performance.now()) {
  const row = wl.rowAt(index);
  if (!row) return;
  const token = ++app.opening;
  wl.select(index);
  wl.markOpen(row.id);
  app.opened = index;
  showCasePane(true);
  const vp = viewportFor($('stage'));
  cv.setViewport(vp);
  $('case').setAttribute('aria-busy', 'true');
  let data;
  try {
    data = await loadCase(row.id, vp);
  } catch (e) {
    if (token === app.opening) $('verdict-status').textContent = `Could not open report ${row.id}: ${e.message}`;
    return;
  }
  if (token !== app.opening) return; // the reader moved on
  cv.render(data, position(index));
  $('case').removeAttribute('aria-busy');
  await nextFrame();
  if (token !== app.opening) return;
  document.body.dataset.caseId = String(row.id);
  performance.measure('case-shown', { start, end: performance.now(), detail: { id: row.id } });
  announce(`Case ${position(index)}: patient ${row.patient_id || 'unknown'}, ${row.priority}, ${row.app}`);
  readyAhead(index, vp, token);
}

/** Load the next (and the previous) case while the reader reads this one. */
function readyAhead(index, vp, token) {
  const next = wl.rowAt(index + 1);
  const prev = wl.rowAt(index - 1);
  delete document.body.dataset.readyId;
  if (next) {
    loadCase(next.id, vp).then(() => {
      if (token !== app.opening) return;
      document.body.dataset.readyId = String(next.id);
      const after = wl.rowAt(index + 2); // then one more, for a reader who moves fast
      if (after) loadCase(after.id, vp).catch(() => {});
    }, () => {});
  }
  if (prev) loadCase(prev.id, vp).catch(() => {});
}

function closeCase() {
  app.opening++;
  app.opened = -1;
  cv.cancelVerdict();
  showCasePane(false);
  wl.markOpen(null);
  delete document.body.dataset.caseId;
}

function step(delta, e) {
  if (cv.verdictOpen()) {
    $('verdict-status').textContent = 'Finish the verdict, or cancel it with Esc, before moving on.';
    return;
  }
  if (app.opened >= 0) {
    const i = app.opened + delta;
    if (wl.rowAt(i)) openAt(i, e?.timeStamp ?? performance.now());
    else if (delta > 0 && wl.list.more) wl.loadMore().then(() => wl.rowAt(i) && openAt(i, performance.now()));
  } else if (wl.move(delta)) {
    const r = wl.selectedRow();
    announce(`${position(wl.list.selected)}: patient ${r.patient_id || 'unknown'}, ${r.priority}, ${r.app}`
      + `${r.critical.length ? `, critical ${r.critical.join(', ')}` : ''}`);
  }
}

function onSigned(report, out) {
  forgetCase(report.id);
  const index = wl.list.rows.findIndex((r) => r.id === report.id);
  const verb = { accept: 'accepted', amend: 'amended', reject: 'rejected' }[out.action];
  announce(`Report ${report.id} ${verb}: now ${STATUS_LABEL[out.status] || out.status}.`);
  banner('');
  let next = index + 1;
  if (!wl.matchesStatus(out.status)) {
    wl.drop(report.id);
    next = index;
  } else if (index >= 0) {
    wl.replaceRow({ ...wl.list.rows[index], status: out.status, verdicts: out.sequence });
  }
  wl.loadCounts().catch(() => {});
  flash(`Patient ${report.patient_id || ''}: ${verb} (${STATUS_LABEL[out.status] || out.status}).`);
  if (wl.rowAt(next)) openAt(next, performance.now());
  else {
    closeCase();
    $('list-state').textContent = 'All done: no more results in this list.';
    show($('list-state'), true);
  }
}

function flash(text) {
  const el = $('flash') || document.body.appendChild(h('div', { id: 'flash', class: 'flash', role: 'status' }));
  el.textContent = text;
  el.classList.add('on');
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => el.classList.remove('on'), 2500);
}

// -- filters -----------------------------------------------------------------------------------------------

function wireFilters() {
  const apply = () => {
    wl.reload().then((fresh) => {
      if (fresh && app.opened >= 0) {
        const open = wl.list.rows.findIndex((r) => r.id === wl.list.openId);
        if (open < 0) closeCase();
        else app.opened = open;
      }
    }).catch((e) => banner(`Could not load the worklist: ${e.message}`));
  };
  for (const [id, key] of [['f-modality', 'modality'], ['f-app', 'app'], ['f-status', 'status']]) {
    $(id).addEventListener('change', (e) => { wl.list.filters[key] = e.target.value; apply(); });
  }
  let timer = null;
  const patient = $('f-patient');
  patient.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => { wl.list.filters.patient = patient.value; apply(); }, 250);
  });
  patient.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      e.preventDefault();
      clearTimeout(timer);
      wl.list.filters.patient = patient.value;
      apply();
      patient.blur();
    }
  });
  $('filters').addEventListener('submit', (e) => e.preventDefault());
}

function wireKeys() {
  const verdict = (kind) => {
    if (app.opened < 0) {
      if (wl.selectedRow()) openAt(wl.list.selected).then(() => verdict(kind));
      return;
    }
    const why = cv.beginVerdict(kind);
    if (why) flash(why);
  };
  bindKeys({
    next: (e) => step(1, e),
    prev: (e) => step(-1, e),
    open: (e) => { if (wl.selectedRow() && !cv.verdictOpen()) openAt(wl.list.selected, e.timeStamp); },
    escape: (e) => {
      if (e.target instanceof HTMLElement && e.target.matches('input, textarea, select') && !cv.verdictOpen()) {
        e.target.blur();
        return true;
      }
      if (cv.cancelVerdict()) return true;
      if (app.opened >= 0) { closeCase(); return true; }
      return false;
    },
    submit: () => { if (!cv.verdictOpen()) return false; cv.submitVerdict(); return true; },
    accept: () => verdict('accept'),
    amend: () => verdict('amend'),
    reject: () => verdict('reject'),
    overlay: () => cv.toggleOverlay(),
    opacity: (d) => cv.changeOpacity(d),
    overlayNumber: (n) => cv.chooseOverlayNumber(n),
    slice: (d) => cv.changeSlice(d),
    filter: () => { const p = $('f-patient'); if (!p.disabled) { p.focus(); p.select(); } },
    help: () => $('help').showModal(),
  });
  $('help-open').addEventListener('click', () => $('help').showModal());
  $('case-back').addEventListener('click', () => closeCase());
  wl.onRowOpen(() => openAt(wl.list.selected, performance.now()));
}

function renderUser(session) {
  const [allowed] = session.signing();
  fill($('user'), h('span', { class: 'who' }, session.userName),
    session.role ? h('span', { class: `role${allowed ? '' : ' no-sign'}` }, humanize(session.role)) : null,
    session.fromEhr ? h('span', { class: 'muted', title: session.serverUrl }, ' via EHR') : null,
    h('button', { type: 'button', class: 'ghost small', onclick: () => { auth.forget(); location.assign('/'); } }, 'Sign out'));
}

// -- start -------------------------------------------------------------------------------------------------

async function boot() {
  performance.mark('worklist-boot');
  cv.wire();
  cv.onVerdict(onSigned);
  wireFilters();
  wireKeys();
  let session;
  try {
    session = await auth.start();
  } catch (e) {
    signInAgain(e.message);
    return;
  }
  if (!session) return; // on the way to the authorization server
  performance.mark('worklist-session');
  app.session = session;
  useSession(session);
  onAuthLost((message) => signInAgain(`Signed out: ${message}`));
  renderUser(session);
  cv.setSigning(session.signing());
  if (session.patientContext) {
    try {
      const ids = await session.patientIdentifiers();
      wl.list.patients = ids;
      wl.list.patientLabel = `Patient ${ids.join(' / ') || session.patientContext} (from ${session.fromEhr ? 'the EHR' : 'your sign-in'})`;
      $('f-patient').value = ids.join(', ');
      $('f-patient').disabled = true;
    } catch (e) {
      banner(`Could not read the launch patient from ${session.serverUrl}: ${e.message}`);
      return;
    }
  }
  try {
    await wl.reload({ keepSelection: false });
  } catch (e) {
    if (!(e instanceof auth.AuthError)) banner(`Could not load the worklist: ${e.message}`);
    return;
  }
  await nextFrame();
  performance.mark('worklist-rendered', { detail: { rows: wl.list.rows.length } });
  document.body.dataset.listReady = String(wl.list.rows.length);
  setInterval(wl.refreshAges, 30000);
  // More rows as the reader scrolls to the end of the list (keys load them as the selection nears the end).
  new IntersectionObserver((seen) => { if (seen.some((e) => e.isIntersecting)) wl.loadMore().catch(() => {}); },
    { root: document.querySelector('.list-pane'), rootMargin: '400px' }).observe($('more'));
  window.addEventListener('resize', () => cv.relayout());
  const first = wl.rowAt(0);
  if (session.patientContext && first) openAt(0); // launched for a patient: straight to their first result
  else if (first) loadCase(first.id, viewportFor($('stage'))).catch(() => {}); // Enter will find it ready
}

boot().catch((e) => banner(`The worklist failed to start: ${e.message}`));

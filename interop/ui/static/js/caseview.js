// The case view: the image with its overlay, the AI result (findings against thresholds, measurements,
// classification), the model card, the patient's labs, the recommendations with their sources, the report text,
// and the verdict (accept / amend / reject).
import { $, dateTime, fill, fixed, h, humanize, pct, show, STATUS_LABEL } from './dom.js';
import { defaultOverlay, loadFrame } from './cases.js';
import { postJSON } from './api.js';

const view = {
  data: null, // the CaseData shown
  imageIndex: null,
  overlay: null, // the overlay's name, or null for none
  visible: true,
  opacity: null, // 0..1 (from the first manifest, then the reader's)
  vp: 1024,
  verdict: null, // 'accept' | 'amend' | 'reject' while one is being given
  signing: [true, ''],
  frameToken: 0,
};

let onSigned = () => {};
export function onVerdict(f) { onSigned = f; }
export const current = () => view.data;
export const verdictOpen = () => view.verdict;

export function setSigning(allowedWhy) {
  view.signing = allowedWhy;
}

// -- header, model card ----------------------------------------------------------------------------------

function renderHead(report, pos, modalities) {
  const title = $('case-title');
  fill(title,
    report.priority === 'stat' ? h('span', { class: 'badge stat' }, 'STAT') : null,
    h('span', null, 'Patient '), h('b', { class: 'patient' }, report.patient_id || '—'),
    h('span', { class: 'muted' }, ` · ${modalities.join('/') || 'Labs'} · ${report.app} · `),
    h('span', { class: `status s-${report.status}` }, STATUS_LABEL[report.status] || report.status),
    report.critical.length ? h('span', { class: 'crit-head' }, ` · critical: ${report.critical.map(humanize).join(', ')}`) : null);
  $('case-pos').textContent = pos;
  const ohif = $('case-ohif'); // the study in the full viewer (interop.ohif), in its own tab
  show(ohif, Boolean(report.study_uid));
  if (report.study_uid) ohif.href = `/ohif/viewer?StudyInstanceUIDs=${encodeURIComponent(report.study_uid)}`;
  const r = report.result;
  const m = r?.model || report.model;
  const card = $('model-card');
  fill(card,
    h('span', { class: 'model-name' }, h('span', { class: 'muted' }, 'Model '), h('b', null, m.name), ` ${m.version}`),
    r ? h('span', { class: 'muted' }, ` · app ${r.app.name} ${r.app.version}`) : null,
    m.sha256 ? h('span', { class: 'muted hash', title: `sha256 ${m.sha256}` }, ` · sha256 ${m.sha256.slice(0, 12)}…`) : null,
    m.demonstration
      ? h('strong', { class: 'demo', id: 'demo-notice' }, humanize(r?.notice || m.notice || 'demonstration model, not for clinical use'))
      : h('span', { class: 'ai-note' }, 'AI output: preliminary until a physician signs'));
  card.classList.toggle('is-demo', Boolean(m.demonstration));
}

// -- findings, measurements, classification ----------------------------------------------------------------

function bar(p, threshold) {
  return h('span', { class: 'pbar', role: 'img', 'aria-label': `probability ${pct(p)}${threshold != null ? `, threshold ${pct(threshold)}` : ''}` },
    h('span', { class: `fill${threshold != null && p >= threshold ? ' over' : ''}`, style: { width: `${(p * 100).toFixed(1)}%` } }),
    threshold != null ? h('span', { class: 'thr', style: { left: `${(threshold * 100).toFixed(1)}%` } }) : null);
}

/** The reader's present/absent for finding f (amend): a checkbox whose label says what it means now. */
function amendBox(f) {
  const word = h('span', { class: 'yours' }, f.present ? 'present' : 'absent');
  const box = h('input', { type: 'checkbox', class: 'amend-finding', dataset: { name: f.name, ai: f.present ? '1' : '0' },
    checked: f.present ? true : null, 'aria-label': `${f.code.display}: present` });
  box.addEventListener('change', () => {
    word.textContent = box.checked ? 'present' : 'absent';
    box.closest('tr').classList.toggle('changed', box.checked !== f.present);
  });
  return h('label', { class: 'check' }, box, ' ', word);
}

/** "0.47 ≥ 0.21"; three decimals where two would read as equal (0.308 < 0.309). */
function versus(p, threshold, present) {
  const n = fixed(p) === fixed(threshold) ? 3 : 2;
  return `${fixed(p, n)} ${present ? '≥' : '<'} ${fixed(threshold, n)}`;
}

function renderFindings(result) {
  const amend = view.verdict === 'amend';
  const findings = result?.findings || [];
  const table = $('findings');
  if (!findings.length) {
    fill(table, h('tbody', null, h('tr', null, h('td', { class: 'muted' }, 'This result has no findings.'))));
    return;
  }
  const overlays = currentImage()?.overlays || [];
  table.classList.toggle('amending', amend);
  fill(table,
    h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Finding'), h('th', { scope: 'col' }, 'Probability vs threshold'),
      h('th', { scope: 'col' }, 'AI'), amend ? h('th', { scope: 'col' }, 'Yours') : null)),
    h('tbody', null, [...findings].sort((a, b) => (b.present - a.present) || (b.probability - a.probability)).map((f) => {
      const heat = overlays.find((o) => o.kind === 'heatmap' && o.name === f.name);
      const name = heat
        ? h('button', { type: 'button', class: `link${view.overlay === f.name ? ' on' : ''}`, title: 'Show its heat-map',
          onclick: () => chooseOverlay(f.name) }, f.code.display)
        : f.code.display;
      return h('tr', { class: f.present ? 'present' : 'absent', dataset: { finding: f.name } },
        h('th', { scope: 'row' }, name),
        h('td', null, bar(f.probability, f.threshold),
          h('span', { class: 'pt' }, versus(f.probability, f.threshold, f.present))),
        h('td', { class: 'call' }, f.present ? 'Present' : 'Absent'),
        amend ? h('td', null, amendBox(f)) : null);
    })));
}

function renderMeasurements(result) {
  const ms = result?.measurements || [];
  show($('measurements-box'), ms.length > 0);
  fill($('measurements'), h('tbody', null, ms.map((m) => h('tr', null,
    h('th', { scope: 'row' }, m.name, m.laterality && !m.name.toLowerCase().includes(m.laterality.display.toLowerCase())
      ? ` (${m.laterality.display})` : ''),
    h('td', { class: 'num' }, `${Number(m.value).toPrecision(3)} `, h('span', { class: 'unit' }, m.unit === '1' ? '' : m.unit))))));
}

function renderClassifications(result) {
  const cs = result?.classifications || [];
  show($('classification-box'), cs.length > 0);
  fill($('classification'), cs.map((c) => {
    const probs = Object.entries(c.probabilities).sort((a, b) => b[1] - a[1]);
    const top = [...c.contributions].sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution)).slice(0, 6);
    return h('div', { class: 'classification' },
      h('p', null, h('span', { class: 'muted' }, `${c.code.display}: `), h('b', { class: 'predicted' }, c.predicted),
        ` (${pct(c.probabilities[c.predicted])})`),
      h('table', { class: 'probs' }, h('tbody', null, probs.map(([label, p]) => h('tr', { class: label === c.predicted ? 'predicted' : null },
        h('th', { scope: 'row' }, label), h('td', null, bar(p, null)), h('td', { class: 'num' }, pct(p)))))),
      top.length ? h('table', { class: 'contrib' },
        h('caption', null, `Top contributions to “${c.predicted}”`),
        h('tbody', null, top.map((t) => h('tr', null,
          h('th', { scope: 'row' }, humanize(t.feature)),
          h('td', { class: 'num' }, t.value == null ? h('span', { class: 'muted', title: 'missing: imputed' }, 'n/a')
            : (typeof t.value === 'number' ? Number(t.value).toPrecision(4).replace(/\.?0+$/, '') : t.value)),
          h('td', { class: t.contribution >= 0 ? 'up' : 'down' }, `${t.contribution >= 0 ? '▲ +' : '▼ '}${fixed(t.contribution)}`))))) : null);
  }));
}

// -- labs, recommendations, text, history ------------------------------------------------------------------

function labValue(o) {
  const q = o.valueQuantity;
  if (q) return `${q.value}${q.unit ? ` ${q.unit}` : ''}`;
  if (o.valueString) return o.valueString;
  if (o.valueCodeableConcept) return o.valueCodeableConcept.text || o.valueCodeableConcept.coding?.[0]?.display || '';
  return '';
}

function labRange(o) {
  const r = o.referenceRange?.[0];
  if (!r) return '';
  if (r.text) return r.text;
  const lo = r.low?.value;
  const hi = r.high?.value;
  return lo != null && hi != null ? `${lo}–${hi}` : lo != null ? `≥ ${lo}` : hi != null ? `≤ ${hi}` : '';
}

function renderLabs(labs) {
  const box = $('labs');
  if (labs?.error) {
    fill(box, h('p', { class: 'muted' }, `Labs could not be read: ${labs.error}`));
    return;
  }
  if (!labs?.length) {
    fill(box, h('p', { class: 'muted' }, 'No lab results for this patient on this node.'));
    return;
  }
  fill(box, h('table', { class: 'labs' },
    h('thead', null, h('tr', null, ['Test', 'Value', 'Ref.', 'Flag', 'When'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', null, labs.map((o) => {
      const flag = o.interpretation?.[0]?.coding?.[0]?.code || '';
      const name = o.code?.text || o.code?.coding?.[0]?.display || o.code?.coding?.[0]?.code || 'Observation';
      return h('tr', { class: flag && flag !== 'N' ? 'abnormal' : null },
        h('th', { scope: 'row', title: name }, name.replace(/ \[.*$/, '')),
        h('td', { class: 'num' }, labValue(o)), h('td', { class: 'muted' }, labRange(o)),
        h('td', { class: 'flag' }, flag), h('td', { class: 'muted when' }, dateTime(o.effectiveDateTime || o.issued)));
    }))));
}

const SYSTEMS = { 'http://snomed.info/sct': 'SNOMED CT', 'http://loinc.org': 'LOINC', 'http://radlex.org': 'RadLex' };
const systemName = (system) => SYSTEMS[system] || String(system).replace(/^https?:\/\//, '');

function renderRecommendations(recs, result) {
  const names = Object.fromEntries([...(result?.findings || []), ...(result?.classifications || [])]
    .map((f) => [f.name, f.code.display]));
  fill($('recs'), recs.length ? recs.map((r) => h('li', null,
    h('p', { class: 'rec-head' }, h('span', { class: 'rec-kind' }, humanize(r.kind)), ' ', h('b', null, r.code.display),
      h('span', { class: 'muted' }, ` (${systemName(r.code.system)} ${r.code.code})`)),
    r.finding ? h('p', { class: 'muted' }, `For: ${names[r.finding] || humanize(r.finding)}`) : null,
    h('p', { class: 'rec-text' }, r.text),
    h('p', { class: 'source' }, 'Source: ', h('cite', null, r.source), h('span', { class: 'snippet' }, ` [${r.snippet_id}]`))))
    : h('li', { class: 'muted none' }, 'No recommendations.'));
}

function renderHistory(signoffs) {
  show($('history-box'), signoffs.length > 0);
  fill($('history'), signoffs.map((s) => h('li', null,
    h('b', null, humanize(s.action)), ` by ${s.reader_name} · ${dateTime(s.at)} → ${STATUS_LABEL[s.status] || s.status}`,
    s.reason ? h('p', null, `Reason: ${s.reason}`) : null, s.conclusion ? h('p', null, `Conclusion: ${s.conclusion}`) : null)));
}

// -- the viewer ---------------------------------------------------------------------------------------------

function currentImage() {
  const d = view.data;
  return d && view.imageIndex != null ? d.manifest.images[view.imageIndex] : null;
}

function overlayOf(image, name) {
  return (image?.overlays || []).find((o) => o.name === name) || null;
}

function layoutFrame() {
  const image = currentImage();
  const frame = $('frame');
  const stage = $('stage');
  if (!image || !stage.clientWidth) return;
  const img = frame.querySelector('img.base');
  const w0 = img?.naturalWidth || image.columns || 1;
  const h0 = img?.naturalHeight || image.rows || 1;
  const ar = w0 / h0;
  const width = Math.min(stage.clientWidth, stage.clientHeight * ar);
  frame.style.setProperty('width', `${Math.floor(width)}px`);
  frame.style.setProperty('height', `${Math.floor(width / ar)}px`);
}

function applyOverlayStyle() {
  const ovl = $('frame').querySelector('img.overlay');
  if (ovl) {
    ovl.style.setProperty('opacity', String(view.opacity));
    ovl.hidden = !view.visible;
  }
  $('ovl-toggle').checked = view.visible;
  $('ovl-opacity').value = String(Math.round(view.opacity * 100));
  $('ovl-opacity-out').textContent = `${Math.round(view.opacity * 100)}%`;
}

function showFrame({ img, ovl }) {
  img.className = 'base';
  img.alt = describeImage();
  const kids = [img];
  if (ovl) {
    ovl.className = 'overlay';
    ovl.alt = '';
    kids.push(ovl);
  }
  const frame = $('frame');
  frame.replaceChildren(...kids);
  // What is on screen now (tests and tools wait for these).
  frame.dataset.image = String(view.imageIndex);
  frame.dataset.overlay = ovl ? view.overlay || '' : '';
  layoutFrame();
  applyOverlayStyle();
}

function describeImage() {
  const image = currentImage();
  const d = view.data;
  if (!image || !d) return '';
  const n = d.manifest.images.length;
  const o = overlayOf(image, view.overlay);
  return `${image.modality || 'Image'} of patient ${d.report.patient_id || ''}${n > 1 ? `, slice ${view.imageIndex + 1} of ${n}` : ''}`
    + `${o && view.visible ? `, with ${o.label}` : ''}`;
}

function renderOverlayControls() {
  const image = currentImage();
  const overlays = image?.overlays || [];
  fill($('ovl-select'), h('option', { value: '' }, 'None'),
    overlays.map((o, i) => h('option', { value: o.name, selected: o.name === view.overlay ? true : null },
      `${i + 1} · ${o.label}${o.kind === 'heatmap' ? ` (${pct(o.probability)})` : ''}`)));
  $('ovl-select').value = view.overlay || '';
  $('viewer-tools').classList.toggle('no-overlays', overlays.length === 0);
  const n = view.data?.manifest.images.length || 0;
  show($('slice-box'), n > 1);
  if (n > 1) {
    $('slice').max = String(n);
    $('slice').value = String(view.imageIndex + 1);
    $('slice-out').textContent = `${view.imageIndex + 1} / ${n}`;
  }
  renderLegend();
}

function renderLegend() {
  const o = overlayOf(currentImage(), view.overlay);
  const m = view.data?.manifest;
  if (!o || !m) {
    fill($('legend'));
    return;
  }
  if (o.kind === 'heatmap') {
    const ramp = m.heatmap_ramp;
    const bar = h('span', { class: 'ramp', role: 'img', 'aria-label': `heat from ${ramp[0][0]} (blue) to 1 (red)` });
    bar.style.setProperty('background', `linear-gradient(to right, ${ramp.map(([, c]) => c).join(', ')})`);
    fill($('legend'), h('span', { class: 'muted' }, `${ramp[0][0]}`), bar, h('span', { class: 'muted' }, '1.0'),
      h('span', { class: 'legend-note' }, 'heat-map: where the model looked; not a measurement'));
  } else {
    const seg = m.segmentations[o.segmentation];
    fill($('legend'), h('ul', { class: 'swatches' }, seg.legend.map((s) => {
      const sw = h('span', { class: 'swatch' });
      sw.style.setProperty('background', s.colour);
      return h('li', null, sw, s.display, s.laterality ? ` (${s.laterality})` : '');
    })));
  }
}

/** Show image `index` with overlay `name` (loading what is not loaded); later calls win over earlier ones. */
async function showImage(index, name) {
  const d = view.data;
  const image = d.manifest.images[index];
  const token = ++view.frameToken;
  view.imageIndex = index;
  view.overlay = name;
  renderOverlayControls();
  const frame = await loadFrame(image, overlayOf(image, name), view.vp);
  if (token !== view.frameToken || view.data !== d) return;
  showFrame(frame);
  renderFindings(d.report.result);
  // The neighbouring slices next.
  for (const j of [index + 1, index - 1, index + 2]) {
    const other = d.manifest.images[j];
    if (other) loadFrame(other, overlayOf(other, sameKind(other, name)), view.vp).catch(() => {});
  }
}

/** On another slice, the overlay that matches the one shown (the same segmentation or finding). */
function sameKind(image, name) {
  if (!name) return null;
  return overlayOf(image, name) ? name : (defaultOverlay(image)?.name ?? null);
}

export function chooseOverlay(name) {
  if (!view.data || view.imageIndex == null) return;
  view.visible = true;
  showImage(view.imageIndex, name || null).catch(reportError);
}

export function chooseOverlayNumber(n) {
  const o = currentImage()?.overlays?.[n - 1];
  if (o) chooseOverlay(o.name);
}

export function toggleOverlay() {
  view.visible = !view.visible;
  applyOverlayStyle();
}

export function changeOpacity(delta) {
  view.opacity = Math.min(1, Math.max(0, Math.round((view.opacity + delta) * 20) / 20));
  view.visible = true;
  applyOverlayStyle();
}

export function changeSlice(delta) {
  const d = view.data;
  if (!d || view.imageIndex == null) return;
  const i = Math.min(d.manifest.images.length - 1, Math.max(0, view.imageIndex + delta));
  if (i !== view.imageIndex) showImage(i, sameKind(d.manifest.images[i], view.overlay)).catch(reportError);
}

function reportError(e) {
  $('verdict-status').textContent = `Could not load the image: ${e.message}`;
}

// -- the case ------------------------------------------------------------------------------------------------

/** Show a loaded case (synchronous: everything is in memory). */
export function render(data, pos) {
  view.data = data;
  view.verdict = null;
  view.imageIndex = data.index;
  view.overlay = data.overlay;
  if (view.opacity == null) view.opacity = data.manifest.default_opacity ?? 0.6;
  view.frameToken++;
  const { report } = data;
  const result = report.result;
  renderHead(report, pos, data.manifest.modalities);
  const hasImage = data.frame != null;
  show($('no-image'), !hasImage);
  show($('viewer-tools'), hasImage);
  $('case').classList.toggle('imageless', !hasImage);
  if (hasImage) {
    showFrame(data.frame);
    renderOverlayControls();
  } else {
    $('frame').replaceChildren();
    fill($('legend'));
  }
  renderFindings(result);
  renderMeasurements(result);
  renderClassifications(result);
  renderLabs(data.labs);
  renderRecommendations(report.recommendations || [], result);
  $('report-text').textContent = report.text || '(no report text)';
  renderHistory(report.signoffs || []);
  renderActions();
  $('verdict-status').textContent = '';
  document.querySelector('.details').scrollTop = 0;
}

export function setViewport(vp) { view.vp = vp; }
export function relayout() { layoutFrame(); }

// -- verdicts ----------------------------------------------------------------------------------------------

function renderActions() {
  const report = view.data?.report;
  const [allowed, why] = view.signing;
  let reason = allowed ? '' : why;
  if (!reason && report) {
    if (report.status === 'cancelled' || report.status === 'entered-in-error') reason = 'This report was rejected; it can’t be signed again.';
    else if (report.status === 'building' || report.status === 'failed') reason = 'This report is still being built.';
  }
  for (const id of ['act-accept', 'act-amend', 'act-reject']) {
    $(id).disabled = Boolean(reason);
    if (reason) $(id).setAttribute('aria-describedby', 'act-why');
    else $(id).removeAttribute('aria-describedby');
  }
  $('act-why').textContent = reason;
  show($('act-why'), Boolean(reason));
  show($('verdict'), false);
  document.querySelectorAll('.action-buttons button').forEach((b) => b.classList.remove('active'));
}

const VERDICT_TEXT = {
  accept: ['Sign: accept the AI result as it stands. Add a conclusion if you wish.', 'Accept and sign'],
  amend: ['Set each finding present or absent as you read it, and/or write your conclusion.', 'Sign amended report'],
  reject: ['Reject the AI result: it will be withdrawn, with your reason.', 'Reject'],
};

/** Open the verdict form of `kind`; returns a reason when it can't be given. */
export function beginVerdict(kind) {
  if (!view.data) return 'Open a case first.';
  if ($(`act-${kind}`).disabled) return $('act-why').textContent;
  if (view.verdict === 'accept' && kind === 'accept') {
    submitVerdict();
    return '';
  }
  view.verdict = kind;
  document.querySelectorAll('.action-buttons button').forEach((b) => b.classList.toggle('active', b.id === `act-${kind}`));
  const [help, label] = VERDICT_TEXT[kind];
  $('verdict-help').textContent = help;
  $('verdict-submit').textContent = label;
  $('verdict-submit').className = kind === 'reject' ? 'danger' : 'primary';
  show($('reason-box'), kind === 'reject');
  show($('reason'), kind === 'reject');
  show($('reason-error'), false);
  $('reason').removeAttribute('aria-invalid');
  show($('conclusion-box'), kind !== 'reject');
  show($('conclusion'), kind !== 'reject');
  $('reason').value = '';
  $('conclusion').value = '';
  show($('verdict'), true);
  renderFindings(view.data.report.result);
  if (kind === 'reject') $('reason').focus();
  else if (kind === 'amend') (document.querySelector('.amend-finding') || $('conclusion')).focus();
  else $('verdict-submit').focus();
  $('actions').scrollIntoView({ block: 'nearest' });
  return '';
}

export function cancelVerdict() {
  if (!view.verdict) return false;
  view.verdict = null;
  renderActions();
  renderFindings(view.data.report.result);
  document.activeElement?.blur();
  return true;
}

export async function submitVerdict() {
  const kind = view.verdict;
  const d = view.data;
  if (!kind || !d || view.submitting) return;
  const body = { action: kind };
  if (kind === 'reject') {
    const reason = $('reason').value.trim();
    if (!reason) {
      show($('reason-error'), true);
      $('reason').setAttribute('aria-invalid', 'true');
      $('reason').focus();
      return;
    }
    body.reason = reason;
  } else {
    const conclusion = $('conclusion').value.trim();
    if (conclusion) body.conclusion = conclusion;
  }
  if (kind === 'amend') {
    const findings = {};
    for (const box of document.querySelectorAll('.amend-finding')) {
      if (box.checked !== (box.dataset.ai === '1')) findings[box.dataset.name] = box.checked;
    }
    body.findings = findings;
    if (!Object.keys(findings).length && !body.conclusion) {
      $('verdict-status').textContent = 'An amendment needs a change: a finding set differently, or a conclusion.';
      return;
    }
  }
  view.submitting = true;
  $('verdict-submit').disabled = true;
  $('verdict-status').textContent = 'Signing…';
  try {
    const out = await postJSON(`/api/reports/${d.report.id}/signoff`, body);
    $('verdict-status').textContent = '';
    view.verdict = null;
    onSigned(d.report, out);
  } catch (e) {
    $('verdict-status').textContent = `Not signed: ${e.message}`;
  } finally {
    view.submitting = false;
    $('verdict-submit').disabled = false;
  }
}

export function wire() {
  $('ovl-select').addEventListener('change', (e) => chooseOverlay(e.target.value));
  $('ovl-toggle').addEventListener('change', (e) => { view.visible = e.target.checked; applyOverlayStyle(); });
  $('ovl-opacity').addEventListener('input', (e) => { view.opacity = Number(e.target.value) / 100; applyOverlayStyle(); });
  $('slice').addEventListener('input', (e) => changeSlice(Number(e.target.value) - 1 - view.imageIndex));
  $('act-accept').addEventListener('click', () => beginVerdict('accept'));
  $('act-amend').addEventListener('click', () => beginVerdict('amend'));
  $('act-reject').addEventListener('click', () => beginVerdict('reject'));
  $('verdict').addEventListener('submit', (e) => { e.preventDefault(); submitVerdict(); });
  $('verdict-cancel').addEventListener('click', () => cancelVerdict());
  new ResizeObserver(() => layoutFrame()).observe($('stage'));
}


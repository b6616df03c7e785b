// Browser scenarios for tests/ui/test_worklist.py: `node tests/ui/drive.mjs <scenario> '<json config>'`.
// Each drives the worklist in headless Chromium like a reader would (keys, clicks), saves screenshots, and
// prints one line `RESULT <json>` with what it saw; the Python test asserts on that. Config: base (the node's
// URL), token (a SMART session injected the way fhirclient keeps one) or user/password (the real sign-in), and
// what the scenario needs (report ids, reasons).
import { launch, screenshot, signedPage, timings, watch } from './browser.mjs';

const [scenario, configText] = process.argv.slice(2);
const cfg = JSON.parse(configText || '{}');
const T = 20000;

const shown = (page, notId) => page.waitForFunction(
  (id) => document.body.dataset.caseId && document.body.dataset.caseId !== String(id), notId ?? '', { timeout: T });

async function openList(page) {
  await page.goto(`${cfg.base}/`);
  await page.waitForSelector('body[data-list-ready]', { timeout: T });
  await page.evaluate(() => { window.__noReload = 'still-here'; });
}

const rowIds = (page) => page.$$eval('#rows tr', (trs) => trs.map((tr) => Number(tr.dataset.id)));

/** Open report `id` from the list by keys: j/k to its row, then Enter. */
async function openById(page, id) {
  const ids = await rowIds(page);
  const target = ids.indexOf(id);
  if (target < 0) throw new Error(`report ${id} is not in the list ${ids}`);
  const selected = await page.$$eval('#rows tr', (trs) => trs.findIndex((tr) => tr.getAttribute('aria-selected') === 'true'));
  const open = await page.evaluate(() => document.body.dataset.caseId);
  if (open) await page.keyboard.press('Escape');
  const key = target > selected ? 'j' : 'k';
  for (let i = 0; i < Math.abs(target - selected); i++) await page.keyboard.press(key);
  await page.keyboard.press('Enter');
  await page.waitForFunction((x) => document.body.dataset.caseId === String(x), id, { timeout: T });
}

async function caseState(page) {
  return page.evaluate(() => {
    const text = (sel) => document.querySelector(sel)?.textContent.trim() ?? null;
    const img = document.querySelector('#frame img.base');
    const ovl = document.querySelector('#frame img.overlay');
    let coloured = 0;
    if (ovl && ovl.naturalWidth) {
      const c = document.createElement('canvas');
      c.width = ovl.naturalWidth;
      c.height = ovl.naturalHeight;
      const g = c.getContext('2d');
      g.drawImage(ovl, 0, 0);
      const px = g.getImageData(0, 0, c.width, c.height).data;
      for (let i = 3; i < px.length; i += 4) if (px[i] > 0) coloured++;
      coloured /= c.width * c.height;
    }
    const box = (el) => el && (({ width, height }) => ({ width: Math.round(width), height: Math.round(height) }))(el.getBoundingClientRect());
    return {
      id: Number(document.body.dataset.caseId),
      title: text('#case-title'),
      position: text('#case-pos'),
      ohif: document.getElementById('case-ohif').hidden ? null : document.getElementById('case-ohif').getAttribute('href'),
      modelCard: text('#model-card'),
      demoNoticeVisible: (() => { const d = document.getElementById('demo-notice'); if (!d) return false; const r = d.getBoundingClientRect(); return r.width > 0 && r.top >= 0 && r.bottom <= innerHeight; })(),
      image: img ? { natural: [img.naturalWidth, img.naturalHeight], box: box(img), complete: img.complete } : null,
      overlay: ovl ? { natural: [ovl.naturalWidth, ovl.naturalHeight], box: box(ovl), hidden: ovl.hidden,
        opacity: Number(getComputedStyle(ovl).opacity), coloured } : null,
      overlayChoice: document.getElementById('ovl-select').value,
      legend: text('#legend'),
      findings: [...document.querySelectorAll('#findings tbody tr')].map((tr) => ({
        name: tr.dataset.finding, text: tr.textContent.replace(/\s+/g, ' ').trim(), present: tr.classList.contains('present') })),
      measurements: [...document.querySelectorAll('#measurements tr')].map((tr) => [...tr.children].map((td) => td.textContent.trim())),
      labs: [...document.querySelectorAll('#labs tbody tr')].map((tr) => [...tr.children].map((td) => td.textContent.trim())),
      labsNote: text('#labs p'),
      recommendations: [...document.querySelectorAll('#recs li')].map((li) => ({
        text: li.textContent.replace(/\s+/g, ' ').trim(), source: li.querySelector('cite')?.textContent ?? null,
        snippet: li.querySelector('.snippet')?.textContent.trim() ?? null })),
      reportText: text('#report-text'),
      actions: ['act-accept', 'act-amend', 'act-reject'].map((id) => ({ id, disabled: document.getElementById(id).disabled })),
      actionsWhy: document.getElementById('act-why').hidden ? null : text('#act-why'),
      verdictOpen: !document.getElementById('verdict').hidden,
      reasonErrorVisible: !document.getElementById('reason-error').hidden,
      status: text('#verdict-status'),
      noReload: window.__noReload === 'still-here',
    };
  });
}

const scenarios = {
  /** The list as loaded: rows in order with their cells, the counts, the filters' options. */
  async list(page) {
    await openList(page);
    const rows = await page.$$eval('#rows tr', (trs) => trs.map((tr) => ({
      id: Number(tr.dataset.id), cells: [...tr.children].map((td) => td.textContent.trim()),
      stat: Boolean(tr.querySelector('.badge.stat')) })));
    const counts = await page.textContent('#counts');
    const options = await page.$$eval('#filters select', (ss) => Object.fromEntries(ss.map((s) => [s.id, [...s.options].map((o) => o.textContent)])));
    await screenshot(page, 'worklist');
    // Filter by app and status from the keyboard-free controls, and by patient after "/".
    await page.keyboard.press('/');
    const focused = await page.evaluate(() => document.activeElement?.id);
    await page.keyboard.type(cfg.patient || '');
    await page.keyboard.press('Enter');
    await page.waitForFunction((p) => [...document.querySelectorAll('#rows tr td.patient')].every((td) => td.textContent === p), cfg.patient, { timeout: T });
    const filtered = await rowIds(page);
    await screenshot(page, 'worklist-filtered');
    return { rows, counts, options, focusedAfterSlash: focused, filtered, timings: await timings(page) };
  },

  /** Enter, j, j, k: each opens a case in place; no navigation happens. */
  async navigate(page) {
    await openList(page);
    const ids = await rowIds(page);
    const opened = [];
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.body.dataset.caseId, null, { timeout: T });
    opened.push(Number(await page.evaluate(() => document.body.dataset.caseId)));
    for (const key of ['j', 'j', 'ArrowDown', 'k', 'ArrowUp']) {
      const before = await page.evaluate(() => document.body.dataset.caseId);
      await page.keyboard.press(key);
      await shown(page, before);
      opened.push(Number(await page.evaluate(() => document.body.dataset.caseId)));
    }
    const state = await caseState(page);
    await screenshot(page, 'case-keyboard');
    await page.keyboard.press('?');
    const helpOpen = await page.evaluate(() => document.getElementById('help').open);
    await screenshot(page, 'help');
    await page.keyboard.press('Escape');
    await page.keyboard.press('Escape'); // back to the list
    const afterEscape = await page.evaluate(() => ({ caseHidden: document.getElementById('case').hidden, caseId: document.body.dataset.caseId ?? null }));
    return { ids, opened, state, helpOpen, afterEscape, timings: await timings(page) };
  },

  /** One case in full: image, overlay and its controls, findings, model card, labs, recommendations. */
  async case(page) {
    await openList(page);
    await openById(page, cfg.report);
    const first = await caseState(page);
    await screenshot(page, 'case');
    await page.keyboard.press('o');
    const hidden = (await caseState(page)).overlay;
    await page.keyboard.press('o');
    await page.keyboard.press(']');
    await page.keyboard.press(']');
    const brighter = (await caseState(page)).overlay;
    await page.keyboard.press('[');
    await page.keyboard.press('2');
    await page.waitForFunction((c) => document.getElementById('frame').dataset.overlay !== c, first.overlayChoice,
      { timeout: T });
    const second = await caseState(page);
    await screenshot(page, 'case-second-overlay');
    // A laptop's screen.
    await page.setViewportSize({ width: 1366, height: 768 });
    await page.waitForTimeout(300);
    const laptop = await caseState(page);
    await screenshot(page, 'case-laptop');
    return { first, hidden, brighter, second, laptop };
  },

  /** A segmentation: the slice with most structure first, its legend, then the slices by , and . */
  async mr(page) {
    await openList(page);
    await openById(page, cfg.report);
    const slice = () => page.textContent('#slice-out');
    const first = { ...(await caseState(page)), slice: await slice(),
      swatches: await page.$$eval('#legend .swatches li', (lis) => lis.map((li) => li.textContent.trim())) };
    await screenshot(page, 'case-segmentation');
    const shownImage = await page.getAttribute('#frame', 'data-image');
    await page.keyboard.press(',');
    await page.waitForFunction((i) => document.getElementById('frame').dataset.image === String(Number(i) - 1),
      shownImage, { timeout: T });
    const previous = { ...(await caseState(page)), slice: await slice() };
    return { first, previous };
  },

  /** a then Enter: the report is signed and the next case opens. */
  async accept(page) {
    await openList(page);
    await openById(page, cfg.report);
    const ids = await rowIds(page);
    await page.keyboard.press('a');
    const form = await caseState(page);
    await screenshot(page, 'accept-confirm');
    await page.keyboard.press('Enter');
    await shown(page, cfg.report);
    const next = await caseState(page);
    const rowsAfter = await rowIds(page);
    await screenshot(page, 'accept-next');
    return { ids, form, next, rowsAfter, timings: await timings(page) };
  },

  /** r, Ctrl+Enter without a reason (refused here), then with one. */
  async reject(page) {
    await openList(page);
    await openById(page, cfg.report);
    await page.keyboard.press('r');
    const focused = await page.evaluate(() => document.activeElement?.id);
    await page.keyboard.press('Control+Enter');
    await page.waitForTimeout(300);
    const refused = await caseState(page);
    await screenshot(page, 'reject-needs-reason');
    await page.keyboard.type(cfg.reason);
    await page.keyboard.press('Control+Enter');
    await shown(page, cfg.report);
    const next = await caseState(page);
    return { focused, refused, next };
  },

  /** e: set a finding the other way, write a conclusion, Ctrl+Enter. */
  async amend(page) {
    await openList(page);
    await openById(page, cfg.report);
    await page.keyboard.press('e');
    const box = `.amend-finding[data-name="${cfg.finding}"]`;
    await page.click(box);
    await page.click('#conclusion');
    await page.keyboard.type(cfg.conclusion);
    await screenshot(page, 'amend');
    await page.keyboard.press('Control+Enter');
    await shown(page, cfg.report);
    return { next: await caseState(page) };
  },

  /** A person who may not sign: the actions are there, disabled, with the reason; a does nothing. */
  async viewer(page) {
    await openList(page);
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.body.dataset.caseId, null, { timeout: T });
    await page.keyboard.press('a');
    await page.waitForTimeout(300);
    const state = await caseState(page);
    const user = await page.textContent('#user');
    await screenshot(page, 'viewer-cannot-sign');
    return { state, user };
  },

  /** The real standalone launch: no session, so the page authorizes at this node; sign in on its page. */
  async login(page) {
    const urls = [];
    page.on('framenavigated', (f) => { if (f === page.mainFrame()) urls.push(f.url()); });
    await page.goto(`${cfg.base}/`);
    await page.waitForURL(/\/auth\/authorize/, { timeout: T });
    await screenshot(page, 'login');
    await page.fill('input[name=username]', cfg.user);
    await page.fill('input[name=password]', cfg.password);
    await page.click('button[type=submit][value=login]');
    await page.waitForSelector('body[data-list-ready]', { timeout: T });
    await screenshot(page, 'after-login');
    return { urls, url: page.url(), user: await page.textContent('#user'), banner: await page.textContent('#banner'),
      rows: (await rowIds(page)).length };
  },

  /** An EHR launch: the EHR opens /launch.html?iss=...&launch=...; sign in at the EHR; the patient's results open. */
  async ehr(page) {
    const urls = [];
    page.on('framenavigated', (f) => { if (f === page.mainFrame()) urls.push(f.url()); });
    await page.goto(`${cfg.base}/launch.html?iss=${encodeURIComponent(cfg.iss)}&launch=${encodeURIComponent(cfg.launch)}`);
    await page.waitForURL((u) => u.href.startsWith(`${cfg.ehr}/auth/authorize`), { timeout: T });
    await screenshot(page, 'ehr-login');
    await page.fill('input[name=username]', cfg.user);
    await page.fill('input[name=password]', cfg.password);
    await page.click('button[type=submit][value=login]');
    await page.waitForSelector('body[data-list-ready]', { timeout: T });
    await page.waitForFunction(() => document.body.dataset.caseId, null, { timeout: T });
    const state = await caseState(page);
    await screenshot(page, 'ehr-launched');
    return { urls, state, counts: await page.textContent('#counts'), patientFilter: await page.inputValue('#f-patient'),
      rows: await page.$$eval('#rows tr td.patient', (tds) => tds.map((td) => td.textContent)), banner: await page.textContent('#banner') };
  },
};

const { context, close } = await launch();
let result;
try {
  const page = cfg.token ? await signedPage(context, cfg.base, cfg.token) : await context.newPage();
  const problems = watch(page);
  try {
    result = await scenarios[scenario](page);
  } catch (e) {
    await screenshot(page, `failed-${scenario}`).catch(() => {});
    result = { error: String(e.stack || e) };
  }
  result.problems = problems;
} finally {
  await close();
}
console.log(`RESULT ${JSON.stringify(result)}`);

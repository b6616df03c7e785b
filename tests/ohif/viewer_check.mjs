// Drives OHIF (served by the node at /ohif/) in headless Chromium through playwright-core, as a radiologist would:
// sign in at the node's login page, find the study in OHIF's study list, open it from the worklist's link
// (/ohif/viewer?StudyInstanceUIDs=<uid>), scroll to the middle slice, load the SEG (segmentation panel) and the
// SR (measurement panel). Writes screenshots and prints one line "RESULT <json>" with what it saw; the pytest
// side (test_viewer.py) judges it.
//
//   node viewer_check.mjs <config.json>
//   config: {playwright, base, study, user, password, shots, viewport: {width, height}}

import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { chromium } = await import(join(cfg.playwright, 'index.mjs'));

const result = { steps: {}, console: [], pageErrors: [], httpErrors: [], dicomweb: { requests: 0, withoutBearer: [] },
                 tokenGrants: [] };
const started = Date.now();
let stepStart = started;
function step(name, data = {}) {
  const now = Date.now();
  result.steps[name] = { ms: now - stepStart, ...data };
  stepStart = now;
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--no-first-run'],
});
const context = await browser.newContext({ viewport: cfg.viewport });
const page = await context.newPage();
page.on('console', m => { if (m.type() === 'error' || (m.type() === 'warning' && !m.text().includes('SCOORD'))) result.console.push(`${m.type()}: ${m.text().slice(0, 800)}`); });
page.on('pageerror', e => result.pageErrors.push(String(e.message).slice(0, 500)));
page.on('request', r => {
  const url = new URL(r.url());
  if (url.pathname.startsWith('/dicomweb')) {
    result.dicomweb.requests += 1;
    if (!(r.headers()['authorization'] || '').startsWith('Bearer ')) result.dicomweb.withoutBearer.push(url.pathname);
  }
  if (url.pathname === '/auth/token' && r.method() === 'POST') {
    result.tokenGrants.push(new URLSearchParams(r.postData() || '').get('grant_type'));
  }
});
page.on('response', r => {
  if (r.status() >= 400) result.httpErrors.push(`${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`);
});

async function dismiss(text, timeout = 0) {
  const button = page.getByText(text, { exact: true });
  try {
    if (timeout) await button.first().waitFor({ timeout });
    if (await button.count()) await button.first().click();
  } catch { /* not shown: nothing to dismiss */ }
}

// A series of the study browser by its modality label (exactly: "SR" must not match "mr_segmentation").
const seriesItem = modality => page.locator('[data-cy=study-browser-thumbnail-no-image]')
  .filter({ has: page.locator('[data-cy=series-modality-label]', { hasText: new RegExp(`^${modality}$`) }) }).first();

async function shot(name, locator) {
  const path = join(cfg.shots, `ohif-${name}.png`);
  await (locator || page).screenshot({ path });
  return path;
}

const viewportState = () => page.evaluate(() => {
  const engine = window.cornerstone?.getRenderingEngines?.()[0];
  const vp = engine?.getViewports?.()[0];
  if (!vp || !vp.getCurrentImageId?.()) return null;
  const data = vp.getImageData?.();
  const scalars = data?.scalarData || data?.imageData?.getPointData?.().getScalars?.().getData?.();
  let min = Infinity, max = -Infinity;
  if (scalars) for (let i = 0; i < scalars.length; i += 7) { min = Math.min(min, scalars[i]); max = Math.max(max, scalars[i]); }
  return { index: vp.getCurrentImageIdIndex(), count: vp.getImageIds().length, imageId: vp.getCurrentImageId(),
           dimensions: data?.dimensions, min, max };
});

try {
  // 1. Sign in: OHIF sends the browser to the node's authorization endpoint (code + PKCE).
  await page.goto(`${cfg.base}/ohif/`);
  await page.waitForURL(/\/auth\/authorize/, { timeout: 30000 });
  const login = await page.locator('main').innerText();
  await shot('login');
  await page.fill('#username', cfg.user);
  await page.fill('#password', cfg.password);
  await page.click('button[value=login]');
  await page.waitForURL(u => u.pathname.startsWith('/ohif') && !u.pathname.includes('callback'), { timeout: 30000 });
  step('login', { page: login });

  // 2. The study list lists the study.
  await dismiss('Confirm and hide', 5000);  // OHIF's "investigational use" notice
  await page.getByText(cfg.accession, { exact: true }).first().waitFor({ timeout: 30000 });
  const row = await page.getByText(cfg.accession, { exact: true }).first()
    .locator('xpath=ancestor::*[self::tr or @role="row"][1]').innerText().catch(() => '');
  step('studyList', { row, text: await page.locator('body').innerText(), shot: await shot('study-list') });

  // 3. The worklist's link opens the study; scroll to the middle slice; the image is drawn.
  await page.goto(`${cfg.base}/ohif/viewer?StudyInstanceUIDs=${cfg.study}`);
  await page.waitForFunction(() => !!window.cornerstone?.getRenderingEngines?.()[0]?.getViewports?.()[0]
    ?.getCurrentImageId?.(), null, { timeout: 60000 });
  await dismiss('Skip all', 3000);  // OHIF's first-visit tour
  const pane = page.locator('[data-cy=viewport-pane]').first();
  const box = await pane.boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  let state = await viewportState();
  const target = Math.floor(state.count / 2);
  for (let i = 0; i < state.count && state.index !== target; i++) {
    await page.mouse.wheel(0, state.index < target ? 100 : -100);
    await page.waitForTimeout(60);
    state = await viewportState();
  }
  await page.waitForTimeout(1500);
  state = await viewportState();
  const series = await page.locator('[data-cy=studyBrowser-panel]').innerText();
  step('viewer', { state, series, viewport: await shot('viewport', pane), shot: await shot('viewer') });

  // 4. The SEG: load it onto the image; the segmentation panel lists its segments.
  await seriesItem('SEG').dblclick();
  await page.getByRole('button', { name: 'Yes' }).first().click({ timeout: 30000 });
  await page.waitForFunction(() => window.services.segmentationService.getSegmentations()
    .some(s => Object.keys(s.segments || {}).length > 0), null, { timeout: 60000 });
  const segButton = page.locator('[data-cy=panelSegmentation-btn]');
  if (await segButton.count()) await segButton.click();
  await page.getByText(cfg.segmentLabel, { exact: true }).first().waitFor({ timeout: 30000 });
  await page.waitForTimeout(1000);
  const segmentations = await page.evaluate(() => window.services.segmentationService.getSegmentations()
    .map(s => ({ label: s.label, segments: Object.values(s.segments || {}).filter(Boolean).map(x => x.label) })));
  const segState = await viewportState();
  step('seg', { segmentations, state: segState, panel: await page.locator('body').innerText(),
                viewport: await shot('seg-viewport', pane), shot: await shot('seg') });

  // 5. The SR: open it; OHIF reads its TID 1500 measurement groups; the measurement panel.
  await seriesItem('SR').dblclick();
  await page.waitForFunction(() => window.services.displaySetService.getActiveDisplaySets()
    .some(d => d.Modality === 'SR' && d.isLoaded), null, { timeout: 60000 });
  const measureButton = page.locator('[data-cy=trackedMeasurements-btn]');
  if (await measureButton.count()) await measureButton.click();
  await page.waitForTimeout(1500);
  const sr = await page.evaluate(() => window.services.displaySetService.getActiveDisplaySets()
    .filter(d => d.Modality === 'SR').map(d => ({
      description: d.SeriesDescription, loaded: d.isLoaded, imagingMeasurementReport: d.isImagingMeasurementReport,
      rehydratable: d.isRehydratable, referencedImages: d.referencedImages?.length,
      measurements: (d.measurements || []).map(m => ({ tracking: m.TrackingIdentifier, labels: m.labels,
                                                      coords: (m.coords || []).filter(c => c && c.ValueType).length })),
    })));
  const panel = await page.locator('body').innerText();
  const srShot = await shot('sr');
  let notice = null;  // OHIF's error notification, with its details
  const details = page.getByText('Show Details', { exact: true });
  if (await details.count()) {
    await details.first().click();
    await page.waitForTimeout(500);
    notice = (await page.locator('body').innerText()).slice(panel.length - 200);
  }
  step('sr', { sr, panel, notice, shot: srShot });
  result.ok = true;
} catch (e) {
  result.ok = false;
  result.error = String(e.stack || e).slice(0, 3000);
  try { result.failShot = await shot('failure'); } catch { /* browser gone */ }
} finally {
  result.totalMs = Date.now() - started;
  await browser.close();
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
}

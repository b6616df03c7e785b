// Shared by the browser tests and bench/worklist.py: start Debian's Chromium through playwright-core, and sign
// a page in the way fhirclient keeps a finished SMART sign-in (sessionStorage SMART_KEY -> state), so that a
// test can hold a token minted for it. The real sign-in (authorization code + PKCE) is driven by its own test.
import path from 'node:path';
import fs from 'node:fs';
import os from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..', '..');
export const PLAYWRIGHT = process.env.PLAYWRIGHT_CORE
  || path.join(REPO, 'tests', '_artifacts', 'npm', 'playwright-core', 'package', 'index.mjs');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export async function launch() {
  const { chromium } = await import(pathToFileURL(PLAYWRIGHT).href);
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'interop-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-dev-shm-usage'],
    viewport: { width: Number(process.env.VIEWPORT_W || 1920), height: Number(process.env.VIEWPORT_H || 1080) },
  });
  const close = async () => {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, close };
}

/** A page whose sessionStorage holds a SMART session for `base` with `token` (before any script runs). */
export async function signedPage(context, base, token, { expiresIn = 3600 } = {}) {
  const page = await context.newPage();
  const state = {
    serverUrl: `${base}/fhir`, clientId: 'interop-worklist', redirectUri: `${base}/`, key: 'test-session',
    scope: 'openid fhirUser user/*.rs user/DiagnosticReport.rus', tokenResponse: { access_token: token, token_type: 'Bearer',
      expires_in: expiresIn }, expiresAt: Math.floor(Date.now() / 1000) + expiresIn,
  };
  await page.addInitScript(([s]) => {
    if (!sessionStorage.getItem('SMART_KEY')) {
      sessionStorage.setItem('SMART_KEY', JSON.stringify(s.key));
      sessionStorage.setItem(s.key, JSON.stringify(s));
    }
  }, [state]);
  return page;
}

/** Collect console errors and failed requests of a page (a test asserts there are none). */
export function watch(page) {
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => {
    const f = r.failure()?.errorText || '';
    if (!f.includes('ERR_ABORTED')) problems.push(`requestfailed: ${r.url()} ${f}`);
  });
  return problems;
}

export const shotsDir = () => {
  const dir = process.env.SCREENSHOTS || path.join(REPO, 'tests', '_artifacts', 'screenshots');
  fs.mkdirSync(dir, { recursive: true });
  return dir;
};

export async function screenshot(page, name) {
  const file = path.join(shotsDir(), `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

/** The "case-shown" measures and the "worklist-rendered" mark the page keeps. */
export async function timings(page) {
  return page.evaluate(() => ({
    listRendered: performance.getEntriesByName('worklist-rendered')[0]?.startTime ?? null,
    cases: performance.getEntriesByName('case-shown').map((m) => ({ id: m.detail?.id, ms: m.duration })),
    navigations: performance.getEntriesByType('navigation').length,
  }));
}

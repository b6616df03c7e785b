// The browser half of bench/worklist.py: `node bench/worklist.mjs '<json config>'` prints `RESULT <json>`.
// Timings are the page's own User Timing entries: the "worklist-rendered" mark (navigation start -> the first
// rows on screen) and the "case-shown" measures (key press -> the frame after the case, image and overlay
// included, is shown). See interop/ui/static/js/main.js.
import { launch, signedPage } from '../tests/ui/browser.mjs';

const cfg = JSON.parse(process.argv[2]);
const T = 60000;

const { context, close } = await launch();
const out = { loads: [], phases: [], rows: null, read: [], rush: [], errors: [] };
try {
  const page = await signedPage(context, cfg.base, cfg.token);
  page.on('pageerror', (e) => out.errors.push(e.message));
  // Worklist load: a warm-up (the browser's caches fill), then timed loads.
  for (let i = 0; i < cfg.loads + 1; i++) {
    await page.goto(`${cfg.base}/`);
    await page.waitForSelector('body[data-list-ready]', { timeout: T });
    const t = await page.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0];
      const mark = (n) => performance.getEntriesByName(n)[0]?.startTime ?? null;
      const list = performance.getEntriesByType('resource').find((e) => e.name.includes('/api/reports?'));
      return { rendered: mark('worklist-rendered'), html: nav.responseEnd, scripts: mark('worklist-boot'),
        session: mark('worklist-session'), listAsked: list?.startTime, listAnswered: list?.responseEnd };
    });
    if (i > 0) {
      out.loads.push(t.rendered);
      out.phases.push(t);
    }
    out.rows = await page.$$eval('#rows tr', (trs) => trs.length);
    // The page loads the first case ahead once the list shows: let that finish before the next load, as it
    // does for a reader (the server would otherwise still be rendering it when the next list is asked for).
    await page.waitForLoadState('networkidle');
  }
  // Case to case as a reader goes: each case is read for a while, so the next one is loaded ahead.
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.body.dataset.caseId, null, { timeout: T });
  const next = async (waitAhead) => {
    const id = await page.evaluate(() => document.body.dataset.caseId);
    if (waitAhead) await page.waitForFunction(() => document.body.dataset.readyId, null, { timeout: T });
    const before = await page.evaluate(() => performance.getEntriesByName('case-shown').length);
    await page.keyboard.press('j');
    await page.waitForFunction((x) => document.body.dataset.caseId !== x
      && performance.getEntriesByName('case-shown').length > 0, id, { timeout: T });
    const all = await page.evaluate(() => performance.getEntriesByName('case-shown').map((m) => m.duration));
    return all.slice(before).at(-1);
  };
  for (let i = 0; i < cfg.cases; i++) out.read.push(await next(true));
  // The same without waiting: j as soon as a case shows (nothing loaded ahead in time).
  for (let i = 0; i < cfg.rush; i++) out.rush.push(await next(false));
} catch (e) {
  out.errors.push(String(e.stack || e));
} finally {
  await close();
}
console.log(`RESULT ${JSON.stringify(out)}`);

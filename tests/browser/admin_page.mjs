// The admin page in Debian's headless chromium, driven by playwright-core.
// Usage: node admin_page.mjs ADMIN_BASE_URL TOKEN REPORTED_USER [ARTIFACT_DIR]
// (tests/browser.rs runs it after a real client reported REPORTED_USER).
//
// The page first refuses a wrong token, then with the right one shows live counts
// and the report queue with the report's evidence; "Ban" on the report bans the
// user and resolves the report: the row leaves the queue and the ban is listed.
// Screenshots go to ARTIFACT_DIR. Exits 0 when all passed.

import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [base, token, reported, outDir = path.resolve('../artifacts/browser')] = process.argv.slice(2);
if (!base || !token || !reported) {
  console.error('usage: node admin_page.mjs ADMIN_BASE_URL TOKEN REPORTED_USER [ARTIFACT_DIR]');
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });

const OVERALL_MS = 60_000;
const STEP_MS = 10_000;
const t0 = Date.now();
const log = (msg) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${msg}`);
const watchdog = setTimeout(() => {
  console.error(`FAIL: the scenario took longer than ${OVERALL_MS / 1000} s`);
  process.exit(3);
}, OVERALL_MS);

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
  timeout: 20_000,
});
const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
context.setDefaultTimeout(STEP_MS);
const page = await context.newPage();
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(e.message));
const shot = (name) => page.screenshot({ path: path.join(outDir, `admin-${name}.png`), fullPage: true });

let failed = false;
try {
  await page.goto(`${base}/`);
  log('page loaded');

  await page.getByLabel('Admin token').fill('not-the-token');
  await page.getByRole('button', { name: 'Connect' }).click();
  await page.waitForFunction(() => document.querySelector('#status').textContent.includes('401'));
  check(await page.locator('#main').isHidden(), 'nothing is shown with a wrong token');
  log('a wrong token is refused');

  await page.getByLabel('Admin token').fill(token);
  await page.getByRole('button', { name: 'Connect' }).click();
  const row = page.locator(`#reports tr[data-reported="${reported}"]`);
  await row.waitFor();
  const online = await page.locator('[data-count="online"] dd').textContent();
  check(Number(online) >= 2, `live count of sessions (${online})`);
  const openReports = await page.locator('[data-count="open reports"] dd').textContent();
  check(openReports === '1', `open reports count (${openReports})`);
  await row.locator('summary').click();
  const evidence = await row.locator('pre').textContent();
  check(evidence.includes('something awful'), `evidence shown (${evidence})`);
  check(await page.locator(`#sessions tr[data-user="${reported}"]`).count() === 1, 'the session is listed');
  await shot('1-report-queue');
  log('the report is in the queue with its evidence');

  await row.getByRole('button', { name: 'Ban' }).click();
  await page.locator(`#bans tr[data-ban="${reported}"]`).waitFor();
  await row.waitFor({ state: 'detached' });
  await page.locator(`#sessions tr[data-user="${reported}"]`).waitFor({ state: 'detached' });
  await shot('2-banned');
  log('banned: the report is resolved and the ban is listed');
  check(pageErrors.length === 0, `no page errors (${pageErrors.join('; ')})`);
} catch (e) {
  failed = true;
  console.error(`FAIL: ${e.message}`);
  await shot('failure').catch(() => {});
} finally {
  clearTimeout(watchdog);
  await browser.close();
}
process.exit(failed ? 1 : 0);

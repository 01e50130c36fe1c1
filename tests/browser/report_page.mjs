// The load tester's HTML report in Debian's headless chromium, driven by playwright-core.
// Usage: node report_page.mjs REPORT_HTML RUN_JSON CAPACITY_JSON [ARTIFACT_DIR]
// (tests/loadtest_report.rs runs it after `rendezvous-loadtest report RUN_JSON CAPACITY_JSON`).
//
// Opens the report from file://, and checks that it shows without console errors or page
// errors, that it makes no network request at all, and that its charts hold what the
// result files hold: per time series one point for each second of the run's timeline, one
// bar per percentile, and on the capacity ladder one mark per step (pass/fail as in the
// file). A screenshot goes to ARTIFACT_DIR. Exits 0 when all passed.

import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';

const [reportFile, runFile, capFile, outDir = path.resolve('../artifacts/browser')] =
  process.argv.slice(2);
if (!reportFile || !runFile || !capFile) {
  console.error('usage: node report_page.mjs REPORT_HTML RUN_JSON CAPACITY_JSON [ARTIFACT_DIR]');
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });

const OVERALL_MS = 60_000;
const t0 = Date.now();
const log = (msg) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${msg}`);
const watchdog = setTimeout(() => {
  console.error(`FAIL: the check took longer than ${OVERALL_MS / 1000} s`);
  process.exit(3);
}, OVERALL_MS);

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const run = JSON.parse(readFileSync(runFile, 'utf8'));
const cap = JSON.parse(readFileSync(capFile, 'utf8'));
const runLabel = run.label || run.scenario;
const points = run.timeline?.points ?? [];
const steps = cap.capacity?.steps ?? [];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  timeout: 20_000,
});
const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
context.setDefaultTimeout(10_000);
const page = await context.newPage();
const url = pathToFileURL(path.resolve(reportFile)).href;
const pageErrors = [];
const consoleErrors = [];
const requests = [];
page.on('pageerror', (e) => pageErrors.push(e.message));
page.on('console', (m) => {
  if (m.type() === 'error' || m.type() === 'warning') consoleErrors.push(m.text());
});
page.on('request', (r) => {
  if (r.url() !== url) requests.push(r.url());
});

let failed = false;
try {
  await page.goto(url, { waitUntil: 'load' });
  log(`opened ${url}`);
  check((await page.title()) === 'Load test report', 'the title');
  const csp = await page.locator('meta[http-equiv="Content-Security-Policy"]').getAttribute('content');
  check(csp.includes("default-src 'none'"), `a strict CSP (${csp})`);
  check((await page.locator('script').count()) === 0, 'no script in the page');
  check(
    (await page.locator(`#legend [data-series="${runLabel}"]`).count()) === 1,
    `the legend names the run ${runLabel}`,
  );

  check(points.length > 0, `the run's JSON has a timeline (${points.length} points)`);
  const counts = {};
  for (const [series, key] of [['p99', 'p99_ms'], ['p50', 'p50_ms'], ['offered', 'offered'],
    ['achieved', 'achieved']]) {
    // Latency is drawn for the seconds in which something finished (count > 0).
    const latency = key.endsWith('_ms');
    const want = points.filter((p) => typeof p[key] === 'number' && (!latency || p.count > 0)).length;
    const got = await page.locator(`circle.pt[data-series="${runLabel} ${series}"]`).count();
    counts[series] = got;
    check(got === want, `${series}: ${got} points drawn, ${want} in the timeline`);
  }
  // The drawn values are the file's, in order.
  const ts = await page
    .locator(`circle.pt[data-series="${runLabel} offered"]`)
    .evaluateAll((els) => els.map((e) => Number(e.dataset.t)));
  check(JSON.stringify(ts) === JSON.stringify(points.map((p) => p.t)), `t of each point (${ts})`);
  log(`time series drawn: ${JSON.stringify(counts)}`);

  const bars = await page.locator(`#chart-percentiles rect.bar[data-series="${runLabel}"]`).count();
  check(bars === 5, `five percentile bars (${bars})`);
  const verdicts = await page.locator(`#verdicts tr.verdict[data-series="${runLabel}"]`).count();
  check(verdicts === run.thresholds.length, `a verdict row per threshold (${verdicts})`);

  const marks = page.locator('svg[id^="chart-capacity-"] g.step');
  check((await marks.count()) === steps.length, `one ladder mark per step (${await marks.count()} of ${steps.length})`);
  const passes = await marks.evaluateAll((els) => els.map((e) => e.dataset.pass === 'true'));
  check(
    JSON.stringify(passes) === JSON.stringify(steps.map((s) => s.pass)),
    `pass/fail of each mark (${passes})`,
  );
  if (cap.capacity.held_up_to != null) {
    const held = await page.locator('svg[id^="chart-capacity-"] g.held').getAttribute('data-v');
    check(Number(held) === cap.capacity.held_up_to, `held up to ${held}`);
  }
  const shown = await page.locator('#chart-latency').isVisible();
  check(shown, 'the latency chart is visible');
  log(`ladder: ${steps.length} marks`);

  await page.screenshot({ path: path.join(outDir, 'loadtest-report.png'), fullPage: true });
  check(pageErrors.length === 0, `no page errors (${pageErrors.join('; ')})`);
  check(consoleErrors.length === 0, `no console errors (${consoleErrors.join('; ')})`);
  check(requests.length === 0, `no network requests (${requests.join(', ')})`);
  log('no errors, no requests');
} catch (e) {
  failed = true;
  console.error(`FAIL: ${e.message}`);
  await page.screenshot({ path: path.join(outDir, 'loadtest-report-failure.png'), fullPage: true })
    .catch(() => {});
} finally {
  clearTimeout(watchdog);
  await browser.close();
}
process.exit(failed ? 1 : 0);

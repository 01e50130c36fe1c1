// Two tabs on a two-node cluster survive a `kill -9` of one node (tests/browser.rs runs it).
// Usage: node failover.mjs BASE_A BASE_B PID_A [ARTIFACT_DIR]
//
// Tab A (served by node A, node list A then B) and tab B (node B, then A) match and
// chat. Node A is killed with SIGKILL right after tab A sent a message. While tab A has no connection, both sides send
// messages from the page (tab A's wait in the SDK). Tab A must move to node B by
// itself, and in the end both tabs must show every message exactly once, in seq order
// without gaps, with nothing left pending. Exits 0 when all passed.

import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [baseA, baseB, pidA, outDir = path.resolve('../artifacts/browser')] = process.argv.slice(2);
if (!baseA || !baseB || !pidA) {
  console.error('usage: node failover.mjs BASE_A BASE_B PID_A [ARTIFACT_DIR]');
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });

const OVERALL_MS = 90_000;
const STEP_MS = 20_000;
const t0 = Date.now();
const log = (msg) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${msg}`);
const pageErrors = [];
const pages = new Map();

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

const hostA = new URL(baseA).host;
const hostB = new URL(baseB).host;

async function open(name, base, nodes) {
  const context = await browser.newContext({ viewport: { width: 1024, height: 820 } });
  context.setDefaultTimeout(STEP_MS);
  const page = await context.newPage();
  pages.set(name, page);
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  page.on('console', (m) => m.type() === 'error' && console.log(`[${name} console] ${m.text()}`));
  await page.goto(`${base}/?user=${name}&nodes=${nodes.join(',')}`);
  await page.waitForFunction(() => window.rdv && window.rdv.conn === 'connected');
  return page;
}

const shot = (page, name) => page.screenshot({ path: path.join(outDir, `${name}.png`), fullPage: true });
const nodeOf = (page) => page.evaluate(() => window.rdv.client.welcome.node);

async function say(page, text) {
  await page.getByLabel('Message', { exact: true }).fill(text);
  await page.getByLabel('Message', { exact: true }).press('Enter');
}

async function find(page) {
  await page.getByLabel('Interests').fill('failover, chess');
  await page.getByLabel('Language').fill('en');
  await page.getByRole('button', { name: 'Find a match' }).click();
}

// Every text once in rdv.messages and once in the log, seqs 1..N in order.
async function checkLog(page, name, texts) {
  const st = await page.evaluate(() => ({
    seqs: window.rdv.messages.map((m) => m.seq),
    texts: window.rdv.messages.map((m) => m.text),
    shown: [...document.querySelectorAll('#log .msg:not(.pending):not(.failed) .text')].map((p) => p.textContent),
    pending: document.querySelectorAll('#log .pending, #log .failed').length,
  }));
  check(st.seqs.every((s, i) => s === i + 1), `${name}: seqs are 1..N in order (${st.seqs})`);
  for (const t of texts) {
    check(st.texts.filter((x) => x === t).length === 1, `${name}: "${t}" once in its messages (${st.texts})`);
    check(st.shown.filter((x) => x === t).length === 1, `${name}: "${t}" shown once (${st.shown})`);
  }
  check(st.texts.length === texts.length, `${name}: nothing else (${st.texts})`);
  check(st.pending === 0, `${name}: nothing pending or failed`);
}

async function main() {
  const a = await open('fo-alice', baseA, [hostA, hostB]);
  const b = await open('fo-bob', baseB, [hostB, hostA]);
  const [nodeA, nodeB] = [await nodeOf(a), await nodeOf(b)];
  check(nodeA !== nodeB, `the tabs are on different nodes (${nodeA}, ${nodeB})`);
  await find(a);
  await find(b);
  await a.waitForFunction(() => window.rdv.state === 'matched');
  await b.waitForFunction(() => window.rdv.state === 'matched');
  log(`matched across nodes ${nodeA} and ${nodeB}`);

  const before = ['hello from A', 'hello from B'];
  await say(a, before[0]);
  await b.waitForFunction((t) => window.rdv.messages.some((m) => m.text === t), before[0]);
  await say(b, before[1]);
  await a.waitForFunction((t) => window.rdv.messages.some((m) => m.text === t), before[1]);
  await shot(a, 'failover-a-1-chat');
  log('chatting');

  // A message on its way while the node dies: stored or not, its ack is likely lost,
  // and the SDK sends it again through the other node with the same client_msg_id.
  const onItsWay = 'A just before the kill';
  await say(a, onItsWay);
  process.kill(Number(pidA), 'SIGKILL');
  log(`node ${nodeA} killed (kill -9 ${pidA}) with a message on its way`);
  await a.waitForFunction(() => window.rdv.conn !== 'connected');
  const during = [];
  for (let i = 1; i <= 3; i++) {
    for (const [page, who] of [[a, 'A'], [b, 'B']]) {
      const text = `${who} during the outage #${i}`;
      await say(page, text);
      during.push(text);
    }
  }
  await shot(a, 'failover-a-2-outage');
  log('both sides wrote during the outage');

  await a.waitForFunction((n) => window.rdv.conn === 'connected' && window.rdv.client.welcome.node === n, nodeB,
    { timeout: 30_000 });
  log(`tab A moved to ${nodeB} by itself`);
  const all = [...before, onItsWay, ...during];
  for (const [page, name] of [[a, 'A'], [b, 'B']]) {
    await page.waitForFunction((n) => window.rdv.messages.length >= n
      && document.querySelectorAll('#log .pending').length === 0, all.length, { timeout: 30_000 });
    log(`tab ${name} has ${all.length} messages`);
  }
  await b.waitForTimeout(500); // a late duplicate would show by now
  await checkLog(a, 'A', all);
  await checkLog(b, 'B', all);
  await shot(a, 'failover-a-3-recovered');
  await shot(b, 'failover-b-3-recovered');
  log('every message once, in seq order, in both tabs');
  check(pageErrors.length === 0, `no page errors: ${pageErrors.join('; ')}`);
}

let code = 0;
try {
  await main();
  log('failover scenario: all checks passed');
} catch (err) {
  console.error(`FAIL: ${err.stack || err}`);
  code = 1;
  for (const [name, page] of pages) {
    const st = await page.evaluate(() => JSON.stringify({ conn: window.rdv.conn, state: window.rdv.state,
      msgs: window.rdv.messages, pending: window.rdv.client.pendingSends, node: window.rdv.client.welcome?.node }))
      .catch((e) => String(e));
    console.error(`${name}: ${st}`);
    await shot(page, `failover-fail-${name}`).catch(() => {});
  }
} finally {
  await browser.close().catch(() => {});
  clearTimeout(watchdog);
}
process.exit(code);

// The browser client in Debian's headless chromium, driven by playwright-core.
// Usage: node two_tabs.mjs BASE_URL [ARTIFACT_DIR]   (tests/browser.rs runs it)
//
// Pages A (alice) and B (bob) match on the same interests, chat both ways, see the
// typing indicator and a read receipt, then start a video call with Chromium's fake
// camera and microphone (B accepts it: auto-answer is off by default) until both
// RTCPeerConnections are `connected`. Page C (carol,
// 360 px wide) searches; A clicks "Next" and is matched with C while B sees A leave.
// Finally C's socket drops: it reconnects and fetches the message it missed.
// Screenshots of every page at each step go to ARTIFACT_DIR. Exits 0 when all passed.

import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [base, outDir = path.resolve('../artifacts/browser')] = process.argv.slice(2);
if (!base) {
  console.error('usage: node two_tabs.mjs BASE_URL [ARTIFACT_DIR]');
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });
for (const f of readdirSync(outDir)) if (f.endsWith('.png')) rmSync(path.join(outDir, f)); // no stale shots

const OVERALL_MS = 60_000;
const STEP_MS = 10_000;
const t0 = Date.now();
const log = (msg) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${msg}`);
const pageErrors = [];
const pages = new Map(); // name -> page, for screenshots when a check fails

const watchdog = setTimeout(() => {
  console.error(`FAIL: the scenario took longer than ${OVERALL_MS / 1000} s`);
  process.exit(3);
}, OVERALL_MS);

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream', '--no-sandbox'],
  timeout: 20_000,
});

async function open(name, viewport = { width: 1024, height: 820 }) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(STEP_MS);
  const page = await context.newPage();
  pages.set(name, page);
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  page.on('console', (m) => m.type() === 'error' && console.log(`[${name} console] ${m.text()}`));
  await page.goto(`${base}/?user=${name}`);
  await page.waitForFunction(() => window.rdv && window.rdv.conn === 'connected');
  return page;
}

const shot = (page, name) => page.screenshot({ path: path.join(outDir, `${name}.png`), fullPage: true });

async function find(page) {
  await page.getByLabel('Interests').fill('chess, jazz');
  await page.getByLabel('Language').fill('en');
  await page.getByLabel('Region').fill('eu');
  await page.getByRole('button', { name: 'Find a match' }).click();
}

async function say(page, text) {
  await page.getByLabel('Message', { exact: true }).fill(text);
  await page.getByLabel('Message', { exact: true }).press('Enter');
}

// Wait until a message with `text` shows in the page's chat log.
const sees = (page, text, cls = 'msg') =>
  page.waitForFunction(
    ([t, c]) => [...document.querySelectorAll(`#log .${c}`)].some((li) => li.textContent.includes(t)),
    [text, cls],
  );

const rdv = (page) => page.evaluate(() => {
  const r = window.rdv;
  return { conn: r.conn, state: r.state, me: r.me, partner: r.partner, roomId: r.roomId,
    seqs: r.messages.map((m) => m.seq), pc: r.pc && r.pc.connectionState };
});

async function main() {
  // The engine serves the client itself, uncached.
  for (const [p, type] of [['/', 'text/html'], ['/app.js', 'text/javascript'], ['/style.css', 'text/css'],
    ['/sdk/index.js', 'text/javascript'], ['/sdk/client.js', 'text/javascript'], ['/sdk/core.js', 'text/javascript'],
    ['/sdk/webrtc.js', 'text/javascript']]) {
    const res = await fetch(base + p);
    check(res.status === 200, `GET ${p} is 200 (${res.status})`);
    check(res.headers.get('content-type').startsWith(type), `GET ${p} is ${type}`);
    check(res.headers.get('cache-control') === 'no-cache', `GET ${p} has Cache-Control: no-cache`);
  }

  const a = await open('alice');
  const b = await open('bob');
  const unlabelled = await a.evaluate(() => [...document.querySelectorAll('input:not([type=hidden])')]
    .filter((i) => !i.labels.length && !i.getAttribute('aria-label')).map((i) => i.id));
  check(unlabelled.length === 0, `every input has a label (${unlabelled})`);
  await shot(a, 'a-0-start');
  log('A and B connected');

  await find(a);
  await find(b);
  await a.waitForFunction(() => window.rdv.state === 'matched');
  await b.waitForFunction(() => window.rdv.state === 'matched');
  const [ra, rb] = [await rdv(a), await rdv(b)];
  check(ra.partner === 'bob' && rb.partner === 'alice', `A and B matched each other (${ra.partner}, ${rb.partner})`);
  check(ra.roomId === rb.roomId, 'one room');
  await sees(a, "You're matched with bob", 'note');
  await shot(a, 'a-1-matched');
  await shot(b, 'b-1-matched');
  log(`matched in room ${ra.roomId}`);

  await say(a, 'hello from A');
  await sees(b, 'hello from A');
  await say(b, 'hi from B');
  await sees(a, 'hi from B');
  log('messages both ways');

  await a.getByLabel('Message', { exact: true }).pressSequentially('are you there?', { delay: 20 });
  await b.waitForFunction(() => document.getElementById('typing').textContent === 'alice is typing…');
  await shot(b, 'b-2-typing');
  log('B sees A typing');

  // B has the page visible, so it reported reading "hello from A".
  await a.waitForFunction(() => [...document.querySelectorAll('#log .msg.own')].some(
    (li) => li.textContent.includes('hello from A') && li.querySelector('.receipt').textContent === 'Seen'));
  await a.getByLabel('Message', { exact: true }).press('Enter');
  await sees(b, 'are you there?');
  await b.waitForFunction(() => document.getElementById('typing').textContent === '');
  await a.waitForFunction(() => document.querySelectorAll('#log .receipt').length === 2
    && [...document.querySelectorAll('#log .receipt')].every((r) => r.textContent === 'Seen'));
  await shot(a, 'a-2-seen');
  log('A sees "Seen"; typing cleared after the send');

  // Calls are not answered automatically (the box is unticked by default): B accepts.
  check(!(await b.getByLabel('Answer video calls automatically').isChecked()), 'auto-answer is off by default');
  await a.getByRole('button', { name: 'Start video call' }).click();
  await b.getByRole('button', { name: 'Accept call' }).click();
  for (const [name, page] of [['A', a], ['B', b]]) {
    await page.waitForFunction(() => window.rdv.pc && window.rdv.pc.connectionState === 'connected',
      null, { timeout: 15_000, polling: 100 });
    log(`${name}: RTCPeerConnection connected`);
  }
  // Frames of the fake camera arrive on both sides (peer to peer).
  for (const page of [a, b]) {
    await page.waitForFunction(() => document.getElementById('remoteVideo').videoWidth > 0
      && document.getElementById('localVideo').videoWidth > 0);
  }
  await a.waitForTimeout(300); // a few frames painted for the screenshots
  await shot(a, 'a-3-call');
  await shot(b, 'b-3-call');
  log('video flows both ways');

  const c = await open('carol', { width: 360, height: 800 });
  await find(c);
  await c.waitForFunction(() => window.rdv.state === 'searching');
  await shot(c, 'c-4-searching');
  const overflow = await c.evaluate(() => document.documentElement.scrollWidth);
  check(overflow <= 360, `no horizontal scrolling at 360 px (${overflow})`);
  log('C searching');

  await a.getByRole('button', { name: 'Next' }).click();
  await a.waitForFunction(() => window.rdv.partner === 'carol' && window.rdv.state === 'matched');
  await c.waitForFunction(() => window.rdv.partner === 'alice' && window.rdv.state === 'matched');
  await sees(b, 'alice left the chat', 'note');
  await b.waitForFunction(() => window.rdv.state === 'idle' && window.rdv.roomId === null && window.rdv.pc === null);
  const [ra2, rc2] = [await rdv(a), await rdv(c)];
  check(ra2.roomId === rc2.roomId && ra2.roomId !== ra.roomId, 'A and C share a new room');
  check(ra2.pc === null, 'A hung up the call when leaving');
  await say(c, 'hey, carol here');
  await sees(a, 'hey, carol here');
  for (const [n, p] of [['a', a], ['b', b], ['c', c]]) await shot(p, `${n}-5-after-next`);
  log('after Next: A matched with C, B saw A leave');

  // C's connection drops; A writes meanwhile; C reconnects and catches up by history.
  await c.evaluate(() => window.rdv.drop());
  await c.waitForFunction(() => window.rdv.conn === 'reconnecting');
  await shot(c, 'c-6-reconnecting');
  await sees(a, 'carol went offline', 'note');
  await say(a, 'did you miss me?');
  await sees(a, 'did you miss me?');
  await c.waitForFunction(() => window.rdv.conn === 'connected');
  await sees(c, 'did you miss me?');
  const rc3 = await rdv(c);
  check(rc3.roomId === ra2.roomId, 'C is back in the same room');
  check(rc3.seqs.join() === '1,2', `C has each message once, in seq order (${rc3.seqs})`);
  await shot(c, 'c-7-resumed');
  await c.emulateMedia({ colorScheme: 'dark' });
  await shot(c, 'c-8-dark');
  log('C reconnected and fetched the missed message');

  check(pageErrors.length === 0, `no page errors: ${pageErrors.join('; ')}`);
}

let code = 0;
try {
  await main();
  log('browser scenario: all checks passed');
} catch (err) {
  console.error(`FAIL: ${err.stack || err}`);
  code = 1;
  for (const [name, page] of pages) await shot(page, `fail-${name}`).catch(() => {});
} finally {
  await browser.close().catch(() => {});
  clearTimeout(watchdog);
}
process.exit(code);

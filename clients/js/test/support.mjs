// Harness of the SDK tests: real `rendezvous` processes on 127.0.0.1 port 0 (found by
// their ready line), a private `redis-server` on a free port for the cluster tests,
// SDK clients whose every received frame is checked against the protocol's JSON
// Schema, and a WebSocket wrapper that can drop a connection the way a network does.
//
// RENDEZVOUS_BIN names the engine binary (tests/sdk.rs sets it); by default the
// release build of this checkout.
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { RendezvousClient } from '../src/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '../../..');
export const BIN = process.env.RENDEZVOUS_BIN || path.join(ROOT, 'target/release/rendezvous');

/** Flags every test engine starts with: quick matching, limits out of the way. */
export const ENGINE_DEFAULTS = [
  '--ladder', '0:same:2,300:same:1,600:any:1,900:any:0',
  '--match-tick-ms', '20',
  '--send-per-second', '100000',
  '--send-burst', '100000',
  '--frames-per-second', '100000',
  '--frames-burst', '100000',
  '--find-match-per-minute', '100000',
];

const children = new Set();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

let unique = 0;
/** A user name no other test of this run uses. */
export function uniq(prefix) {
  unique += 1;
  return `${prefix}-${process.pid}-${unique}`;
}

/** True while the child process has not exited (by code or by signal). */
export const running = (proc) => proc.exitCode === null && proc.signalCode === null;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `cond` every 50 ms until it holds, or fail after `ms` naming `what`. */
export async function until(cond, what, ms = 15_000) {
  const end = Date.now() + ms;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await sleep(50);
  }
}

// ---------------------------------------------------------------- engine processes

export class Engine {
  constructor(proc, addr, nodeId, log) {
    this.proc = proc;
    this.addr = addr;
    this.nodeId = nodeId;
    this.log = log;
    this.ws = `ws://${addr}/ws`;
    this.http = `http://${addr}`;
  }

  static async start(nodeId, args = []) {
    assert.ok(existsSync(BIN), `engine binary ${BIN} is missing: build it with \`cargo build --release\``);
    const proc = spawn(BIN, ['--bind', '127.0.0.1:0', '--node-id', nodeId, ...ENGINE_DEFAULTS, ...args], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    });
    children.add(proc);
    proc.on('exit', () => children.delete(proc));
    const log = [];
    const addr = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${nodeId} did not log its ready line:\n${log.join('\n')}`)), 20_000);
      let buf = '';
      proc.stderr.on('data', (chunk) => {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          log.push(line);
          if (log.length > 400) log.shift();
          const m = line.match(/listening on http:\/\/(\S+)/);
          if (m) {
            clearTimeout(timer);
            resolve(m[1]);
          }
        }
      });
      proc.on('exit', (code) => reject(new Error(`${nodeId} exited (${code}) before it was ready:\n${log.join('\n')}`)));
    });
    return new Engine(proc, addr, nodeId, log);
  }

  /** Kill as a crash would. */
  kill9() {
    this.proc.kill('SIGKILL');
  }

  /** Graceful drain (clients get 1012), and wait for the exit. */
  async stop(signal = 'SIGTERM') {
    if (!running(this.proc)) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.kill(signal);
    await exited;
  }

  async status(p) {
    try {
      return (await fetch(this.http + p)).status;
    } catch {
      return 0;
    }
  }
}

// ---------------------------------------------------------------- redis

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function ping(port) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    let out = '';
    sock.setTimeout(500, () => sock.destroy());
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => {
      out += d;
      if (out.includes('\r\n')) sock.end();
    });
    sock.on('close', () => resolve(out.startsWith('+PONG')));
    sock.on('error', () => resolve(false));
  });
}

export class Redis {
  constructor(port) {
    this.port = port;
    this.url = `redis://127.0.0.1:${port}`;
    this.proc = null;
  }

  static async start() {
    const r = new Redis(await freePort());
    await r.launch();
    return r;
  }

  async launch() {
    const proc = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no'], { stdio: 'ignore' });
    proc.on('error', (err) => {
      throw new Error(`cannot run redis-server (${err.message}): install it (Debian: apt-get install redis-server)`);
    });
    children.add(proc);
    proc.on('exit', () => children.delete(proc));
    this.proc = proc;
    await until(() => ping(this.port), `redis-server answering PING on ${this.port}`, 10_000);
  }

  async stop() {
    if (!this.proc || !running(this.proc)) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.kill('SIGKILL');
    await exited;
  }

  async restart() {
    await this.stop();
    await this.launch();
  }
}

// ---------------------------------------------------------------- schema

/** The checked-in JSON Schema of the protocol (fails when there is none). */
export function schemaFile() {
  const file = findSchema();
  assert.ok(file, 'the protocol JSON Schema is missing (expected under actors/protocol/)');
  return file;
}

function findSchema() {
  if (process.env.RENDEZVOUS_SCHEMA) return process.env.RENDEZVOUS_SCHEMA;
  // The schema generated from the Rust types lives somewhere under actors/protocol/:
  // the JSON file there that describes `ServerFrame`.
  const found = [];
  const walk = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory() && e.name !== 'target' && e.name !== 'node_modules') walk(p);
      else if (e.isFile() && e.name.endsWith('.json') && readFileSync(p, 'utf8').includes('ServerFrame')) found.push(p);
    }
  };
  walk(path.join(ROOT, 'actors/protocol'));
  return found.sort()[0];
}

let validator = null;
async function serverFrameValidator() {
  if (validator) return validator;
  const schema = JSON.parse(readFileSync(schemaFile(), 'utf8'));
  const { default: Ajv2020 } = await import('ajv/dist/2020.js');
  const { default: Ajv } = await import('ajv');
  const draft2020 = String(schema.$schema || '').includes('2020-12');
  const ajv = draft2020 ? new Ajv2020({ strict: false, allErrors: true }) : new Ajv({ strict: false, allErrors: true });
  // The schema names its server-frame root `ServerFrame` (in $defs / definitions) or is it.
  const defs = schema.$defs || schema.definitions || {};
  let root = schema;
  if (defs.ServerFrame) {
    const key = schema.$defs ? '$defs' : 'definitions';
    root = { ...schema, $ref: `#/${key}/ServerFrame` };
    delete root.oneOf;
    delete root.anyOf;
    delete root.properties;
    delete root.type;
  } else if (schema.properties?.server) {
    root = { ...schema, ...schema.properties.server };
  }
  validator = ajv.compile(root);
  return validator;
}

/** Every frame the SDK clients of this process received, for the schema check. */
export const receivedFrames = [];

/** Check every received frame against the schema; fails listing the first bad ones. */
export async function validateReceivedFrames() {
  const validate = await serverFrameValidator();
  const bad = [];
  for (const f of receivedFrames) {
    if (!validate(f)) bad.push(`${JSON.stringify(f)}: ${JSON.stringify(validate.errors.slice(0, 3))}`);
  }
  assert.ok(receivedFrames.length > 0, 'no frames were received');
  assert.equal(bad.length, 0, `${bad.length} of ${receivedFrames.length} server frames break the schema:\n${bad.slice(0, 5).join('\n')}`);
  return receivedFrames.length;
}

// ---------------------------------------------------------------- clients

/**
 * A WebSocket class whose sockets the test can drop like a network would (`drop()`
 * closes the newest one), and which can swallow incoming frames (`swallow(pred)`:
 * the first frame matching is not delivered, and the socket is dropped right then,
 * so its sender never learns about it).
 */
export function droppableWebSocket() {
  const Base = globalThis.WebSocket;
  const sockets = [];
  const swallowers = [];
  class TestWebSocket extends Base {
    constructor(url, protocols) {
      super(url, protocols);
      sockets.push(this);
    }
    set onmessage(fn) {
      super.onmessage = (e) => {
        let frame = null;
        try {
          frame = JSON.parse(e.data);
        } catch {
          // not JSON: deliver as is
        }
        const i = frame ? swallowers.findIndex((p) => p(frame)) : -1;
        if (i >= 0) {
          swallowers.splice(i, 1);
          this.close(4000, 'test: dropped');
          return;
        }
        fn(e);
      };
    }
    get onmessage() {
      return super.onmessage;
    }
  }
  return {
    WebSocket: TestWebSocket,
    drop: () => sockets[sockets.length - 1]?.close(4000, 'test: dropped'),
    swallow: (pred) => swallowers.push(pred),
    get count() {
      return sockets.length;
    },
  };
}

/** An SDK client for `user` on `urls`, recording frames and events; connected. */
export async function client(urls, user, opts = {}) {
  const c = new RendezvousClient({
    urls: Array.isArray(urls) ? urls : [urls],
    user,
    backoff: { initialMs: 100, maxMs: 1000 },
    ...opts,
  });
  c.events = [];
  c.messages = [];
  c.on('frame', (f) => receivedFrames.push(f));
  for (const type of ['state', 'recovered', 'retrying', 'room_ended', 'disconnected', 'error']) {
    c.on(type, (ev) => c.events.push({ type, ...ev }));
  }
  c.on('message', (m) => c.messages.push(m));
  await c.connect();
  return c;
}

/** Two fresh users matched with each other; returns the clients and the room id. */
export async function matchedPair(urlA, urlB, opts = {}) {
  const interest = uniq('topic').replace(/[^a-z0-9-]/g, '').slice(0, 30);
  const a = await client(urlA, uniq('alice'), opts.a);
  const b = await client(urlB, uniq('bob'), opts.b);
  const foundA = a.waitFor('match_found');
  const foundB = b.waitFor('match_found');
  await a.findMatch({ interests: [interest], language: 'en' });
  await b.findMatch({ interests: [interest], language: 'en' });
  const [fa, fb] = await Promise.all([foundA, foundB]);
  assert.equal(fa.room_id, fb.room_id, 'one room for both');
  return { a, b, room: fa.room_id };
}

/** The texts of `messages` in order, and a check they are strictly increasing in seq. */
export function inOrderOnce(messages) {
  for (let i = 1; i < messages.length; i++) {
    assert.ok(messages[i].seq > messages[i - 1].seq, `seq order: ${messages.map((m) => m.seq)}`);
  }
  return messages.map((m) => m.text);
}

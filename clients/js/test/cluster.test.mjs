// The SDK against a two-node cluster sharing one real redis-server: a send while
// Redis is down gets `unavailable` and is retried by the SDK until Redis is back, then
// stored once; a draining node (1012) sends its clients to the next node of the list
// at once. Every frame the server sent is checked against the protocol's JSON Schema.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Engine, Redis, running, inOrderOnce, matchedPair, sleep, until, validateReceivedFrames } from './support.mjs';

let redis;
let nodes = [];
const open = [];

before(async () => {
  redis = await Redis.start();
  nodes = await Promise.all(
    ['sdk-n1', 'sdk-n2'].map((id) => Engine.start(id, ['--redis-url', redis.url, '--reconnect-grace-ms', '30000'])),
  );
  for (const n of nodes) await until(async () => (await n.status('/readyz')) === 200, `${n.nodeId} ready`);
});

after(async () => {
  for (const c of open) c.close();
  await Promise.all(nodes.map((n) => n.stop('SIGKILL')));
  await redis?.stop();
});

test('a send while Redis is down is retried after `unavailable` and stored once when Redis is back', async () => {
  const [n1, n2] = nodes;
  const { a, b, room } = await matchedPair(n1.ws, n2.ws);
  open.push(a, b);
  await a.send(room, 'before');
  await until(() => b.messages.length === 1, 'bob has the first message');

  await redis.stop();
  try {
    await whileRedisIsDown(a, b, room);
  } finally {
    if (!running(redis.proc)) await redis.restart();
  }
});

async function whileRedisIsDown(a, b, room) {
  for (const n of nodes) await until(async () => (await n.status('/readyz')) === 503, `${n.nodeId} not ready`);
  const sent = a.send(room, 'while redis was down', { timeoutMs: 60_000 });
  await until(() => a.events.some((e) => e.type === 'retrying'), 'the SDK is retrying the send', 10_000);
  const retry = a.events.find((e) => e.type === 'retrying');
  assert.equal(retry.code, 'unavailable', 'the retryable error code');
  const err = a.events.find((e) => e.type === 'error');
  assert.equal(err.code, 'unavailable');
  assert.equal(typeof err.retry_after_ms, 'number');
  assert.equal(err.client_msg_id, retry.client_msg_id);
  await sleep(500);
  assert.equal(b.messages.length, 1, 'nothing stored while Redis is down');

  await redis.restart();
  const ack = await sent;
  assert.equal(ack.seq, 2);
  await until(() => b.messages.length === 2, 'bob gets the retried message');
  await sleep(300);
  assert.deepEqual(inOrderOnce(b.messages), ['before', 'while redis was down']);
  const h = await b.history(room, 0);
  assert.deepEqual(h.messages.map((m) => m.text), ['before', 'while redis was down'], 'stored once');
}

test('1012: a client of a draining node moves to the next node of its list at once', async () => {
  for (const n of nodes) await until(async () => (await n.status('/readyz')) === 200, `${n.nodeId} ready again`);
  const [n1, n2] = nodes;
  const { a, b, room } = await matchedPair([n2.ws, n1.ws], [n1.ws, n2.ws]);
  open.push(a, b);
  assert.equal(a.welcome.node, 'sdk-n2');
  await n2.stop('SIGTERM');
  await until(() => a.state === 'open' && a.welcome.node === 'sdk-n1', 'alice on sdk-n1', 15_000);
  const moved = a.events.find((e) => e.type === 'state' && e.state === 'reconnecting');
  assert.equal(moved.code, 1012);
  assert.equal(moved.retryInMs, 0, 'no backoff after a drain');
  assert.ok(a.room(room), 'alice still holds the room');
  const ack = await a.send(room, 'from the other node');
  await until(() => b.messages.some((m) => m.seq === ack.seq), 'bob gets it');
});

test('every frame the server sent matches the protocol schema', async () => {
  const n = await validateReceivedFrames();
  assert.ok(n > 10, `${n} frames checked`);
});

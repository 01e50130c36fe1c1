// The SDK against one real engine process: matching and chat, resend after a dropped
// connection stored once, catch-up after a reconnect (everything, or a trimmed gap),
// errors routed to the send they name, and no reconnect after 4009. Every frame the
// server sent is checked against the protocol's JSON Schema at the end.
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, test } from 'node:test';
import { Calls, RendezvousError } from '../src/index.js';
import { Engine, client, droppableWebSocket, inOrderOnce, matchedPair, sleep, uniq, until, validateReceivedFrames } from './support.mjs';

let engine;
let trimming; // an engine keeping only 3 messages per room
let secured; // an engine that verifies tokens
const SECRET = 'sdk-test-secret-of-at-least-32-bytes!';
const open = [];

before(async () => {
  [engine, trimming, secured] = await Promise.all([
    Engine.start('sdk-a', ['--reconnect-grace-ms', '30000']),
    Engine.start('sdk-trim', ['--reconnect-grace-ms', '30000', '--history-len', '3']),
    Engine.start('sdk-jwt', ['--jwt-secret', SECRET, '--refresh-min-interval-ms', '0', '--token-grace-ms', '2000',
      '--ice-servers', 'stun:stun.example.org:3478,turn:turn.example.org:3478', '--turn-secret', 'sdk-turn-secret']),
  ]);
});

after(async () => {
  for (const c of open) c.close();
  await Promise.all([engine?.stop(), trimming?.stop(), secured?.stop()]);
});

const keep = (...cs) => {
  open.push(...cs);
  return cs;
};

test('matching and chat both ways, with members and seqs in the room state', async () => {
  const { a, b, room } = await matchedPair(engine.ws, engine.ws);
  keep(a, b);
  assert.deepEqual(a.room(room).members.sort(), [a.userId, b.userId].sort());
  const ack = await a.send(room, 'hello');
  assert.equal(ack.seq, 1);
  assert.equal(ack.room_id, room);
  await until(() => b.messages.length === 1, 'bob gets hello');
  assert.deepEqual([b.messages[0].text, b.messages[0].sender, b.messages[0].seq], ['hello', a.userId, 1]);
  const ack2 = await b.send(room, 'hi back');
  assert.equal(ack2.seq, 2);
  await until(() => a.messages.length === 2, 'alice gets both (her own too)');
  assert.deepEqual(inOrderOnce(a.messages), ['hello', 'hi back']);
  assert.equal(a.room(room).lastSeq, 2);

  const typing = b.waitFor('typing');
  assert.equal(a.typing(room, true), true);
  assert.equal((await typing).user_id, a.userId);
  const read = a.waitFor('read');
  b.read(room, 2);
  assert.equal((await read).seq, 2);
  const sig = b.waitFor('signal');
  a.signal(room, { kind: 'hello' });
  assert.deepEqual((await sig).payload, { kind: 'hello' });
});

test('a send whose ack was lost with the connection is resent with its id and stored once', async () => {
  const net = droppableWebSocket();
  const { a, b, room } = await matchedPair(engine.ws, engine.ws, { a: { WebSocket: net.WebSocket } });
  keep(a, b);
  // The server stores the message and acks it, but the ack dies with the connection.
  net.swallow((f) => f.type === 'ack');
  const ack = await a.send(room, 'exactly once');
  assert.ok(net.count >= 2, 'alice reconnected');
  assert.ok(a.events.some((e) => e.type === 'disconnected'), 'alice saw the drop');
  assert.equal(ack.seq, 1, 'the ack of the resend is the original one');
  const history = await b.history(room, 0);
  assert.deepEqual(history.messages.map((m) => [m.seq, m.text]), [[1, 'exactly once']]);
  await sleep(300);
  assert.deepEqual(b.messages.map((m) => m.text), ['exactly once'], 'bob got it once');
});

test('a reconnect within the grace catches up from history and reports everything recovered', async () => {
  const net = droppableWebSocket();
  const { a, b, room } = await matchedPair(engine.ws, engine.ws, { a: { WebSocket: net.WebSocket } });
  keep(a, b);
  await b.send(room, 'before');
  await until(() => a.messages.length === 1, 'alice has the first message');
  // Alice's network goes away for a while: the engine keeps her seat for the grace.
  a.options.backoff = { initialMs: 3000, maxMs: 3000, jitter: 0 }; // room for b's sends on a busy machine
  const recovered = a.waitFor('recovered', (r) => r.room_id === room, 20_000);
  net.drop();
  await until(() => a.state === 'reconnecting', 'alice is reconnecting');
  for (const t of ['one', 'two', 'three']) await b.send(room, t);
  const report = await recovered;
  assert.deepEqual(
    { missed: report.missed, recovered: report.recovered, lost: report.lost, after: report.after_seq },
    { missed: 3, recovered: true, lost: 0, after: 1 },
  );
  assert.deepEqual(inOrderOnce(a.messages), ['before', 'one', 'two', 'three']);
  await b.send(room, 'live again');
  await until(() => a.messages.length === 5, 'a live message after the catch-up');
  assert.deepEqual(a.messages.map((m) => m.seq), [1, 2, 3, 4, 5]);
});

test('a reconnect after history was trimmed reports the gap', async () => {
  const net = droppableWebSocket();
  const { a, b, room } = await matchedPair(trimming.ws, trimming.ws, { a: { WebSocket: net.WebSocket } });
  keep(a, b);
  await b.send(room, 'seen');
  await until(() => a.messages.length === 1, 'alice has message 1');
  a.options.backoff = { initialMs: 3000, maxMs: 3000, jitter: 0 }; // room for b's sends on a busy machine
  const recovered = a.waitFor('recovered', (r) => r.room_id === room, 20_000);
  net.drop();
  await until(() => a.state === 'reconnecting', 'alice is reconnecting');
  for (let i = 2; i <= 7; i++) await b.send(room, `m${i}`);
  const report = await recovered;
  // The room keeps 3 messages (5, 6, 7): 2, 3 and 4 are gone for good.
  assert.equal(report.recovered, false);
  assert.equal(report.lost, 3);
  assert.equal(report.missed, 3);
  assert.deepEqual(inOrderOnce(a.messages), ['seen', 'm5', 'm6', 'm7']);
});

test('an error names the send that failed (client_msg_id echo)', async () => {
  const { a, b, room } = await matchedPair(engine.ws, engine.ws);
  keep(a, b);
  const errors = [];
  a.on('error', (f) => errors.push(f));
  const first = a.send(room, 'fine 1', { clientMsgId: 'ok-1' });
  const bad = a.send('r-no-such-room', 'lost', { clientMsgId: 'bad-1' });
  const second = a.send(room, 'fine 2', { clientMsgId: 'ok-2' });
  const [r1, rBad, r2] = await Promise.allSettled([first, bad, second]);
  assert.equal(r1.status, 'fulfilled', `first: ${r1.reason}`);
  assert.equal(r2.status, 'fulfilled', `second: ${r2.reason}`);
  assert.equal(rBad.status, 'rejected');
  assert.ok(rBad.reason instanceof RendezvousError);
  assert.equal(rBad.reason.code, 'not_in_room');
  assert.equal(rBad.reason.clientMsgId, 'bad-1');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].client_msg_id, 'bad-1', 'the error frame echoes the id');
});

test('find_match without interests is refused with bad_request', async () => {
  const a = await client(engine.ws, uniq('lonely'));
  try {
    const refused = a.waitFor('error', undefined, 3000);
    a.ws.send(JSON.stringify({ action: 'find_match', language: 'xx' }));
    const err = await refused;
    assert.equal(err.code, 'bad_request');
  } finally {
    a.close(); // a search accepted by mistake must not match the next tests' users
  }
});

test('4009: a client replaced by a newer connection of its user does not reconnect', async () => {
  const user = uniq('twice');
  const first = await client(engine.ws, user);
  const second = await client(engine.ws, user);
  keep(first, second);
  await until(() => first.state === 'closed', 'the first client is closed');
  const closed = first.events.find((e) => e.type === 'state' && e.state === 'closed');
  assert.equal(closed.code, 4009);
  await sleep(1500);
  assert.equal(first.state, 'closed', 'still closed');
  assert.equal(first.events.filter((e) => e.type === 'state' && e.state === 'connecting').length, 1, 'never tried again');
  assert.equal(second.state, 'open', 'the newer connection was left alone');
  assert.ok(!second.events.some((e) => e.type === 'disconnected'));
  await assert.rejects(first.send('r', 'x'), (e) => e.code === 'not_connected');
});

/** An HS256 JWT for `sub`, expiring in `secs`. */
function jwt(sub, secs) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + secs })}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

test('getToken: the token for connecting, and a new one sent as refresh on token_expired', async () => {
  const user = uniq('carol');
  const issued = [];
  const getToken = async () => {
    const t = jwt(user, issued.length === 0 ? 2 : 3600); // the first one expires soon
    issued.push(t);
    return t;
  };
  const c = await client(secured.ws, undefined, { getToken });
  keep(c);
  assert.equal(c.userId, user);
  assert.equal(issued.length, 1);
  const refreshed = await c.waitFor('refreshed', undefined, 20_000);
  assert.equal(issued.length, 2, 'asked for a second token');
  assert.ok(refreshed.expires_at > Date.now() + 3_000_000, `the new token is in force (${refreshed.expires_at})`);
  assert.ok(c.events.some((e) => e.type === 'error' && e.code === 'token_expired'));
  assert.equal(c.state, 'open');
  assert.ok(!c.events.some((e) => e.type === 'disconnected'), 'the session stayed');
});

test('4001: after an expired token is not refreshed, getToken is asked again and the client reconnects', async () => {
  const user = uniq('dave');
  const issued = [];
  const getToken = async () => {
    // 1: expires soon; 2 (the refresh): another user's, refused; 3: good for an hour.
    const t = [jwt(user, 2), jwt(`${user}-other`, 3600), jwt(user, 3600)][Math.min(issued.length, 2)];
    issued.push(t);
    return t;
  };
  const c = await client(secured.ws, undefined, { getToken });
  keep(c);
  await until(() => c.events.some((e) => e.type === 'disconnected' && e.code === 4001), 'closed with 4001', 20_000);
  await until(() => c.state === 'open', 'connected again', 20_000);
  assert.equal(issued.length, 3, 'a new token for the reconnect');
  assert.equal(c.userId, user);
  assert.ok(c.events.some((e) => e.type === 'error' && e.code === 'unauthorized'), 'the refresh was refused');
});

test('a send that cannot be delivered rejects with timeout after its deadline', async () => {
  const net = droppableWebSocket();
  const { a, b, room } = await matchedPair(engine.ws, engine.ws, { a: { WebSocket: net.WebSocket } });
  keep(a, b);
  a.options.backoff = { initialMs: 5000, maxMs: 5000, jitter: 0 };
  net.drop();
  await until(() => a.state === 'reconnecting', 'alice is offline');
  const started = Date.now();
  await assert.rejects(a.send(room, 'too late', { timeoutMs: 400 }), (e) => e.code === 'timeout');
  assert.ok(Date.now() - started >= 350, 'not before its deadline');
  assert.deepEqual(a.pendingSends, []);
});

test('ICE servers come from the server, TURN with credentials for this user', async () => {
  const user = uniq('erin');
  const c = await client(secured.ws, undefined, { token: jwt(user, 3600) });
  keep(c);
  const ice = c.iceServers;
  assert.deepEqual(ice.map((s) => s.urls), [['stun:stun.example.org:3478'], ['turn:turn.example.org:3478']]);
  const turn = ice[1];
  assert.match(turn.username, new RegExp(`^\\d+:${user}$`), 'EXPIRY:USER');
  assert.ok(Number(turn.username.split(':')[0]) * 1000 > Date.now(), 'not expired');
  assert.equal(typeof turn.credential, 'string');
  const calls = new Calls(c, { RTCPeerConnection: class {} });
  assert.deepEqual(await calls.iceServers(), ice, 'calls use them');
  calls.dispose();
});

test('every frame the server sent matches the protocol schema', async () => {
  const n = await validateReceivedFrames();
  assert.ok(n > 20, `${n} frames checked`);
});

// The SDK's pure rules (src/core.js), no server: backoff, close codes, catch-up and
// the outbox.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Outbox, RoomBook, backoffDelay, closePolicy, isRetryable, welcomeRooms } from '../src/core.js';

test('backoff doubles up to the cap, jittered down by at most the jitter share', () => {
  const b = { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 };
  assert.equal(backoffDelay(0, b, () => 0), 100);
  assert.equal(backoffDelay(3, b, () => 0), 800);
  assert.equal(backoffDelay(10, b, () => 0), 1000);
  assert.equal(backoffDelay(10, b, () => 0.999), 500);
  for (let i = 0; i < 50; i++) {
    const d = backoffDelay(2, b);
    assert.ok(d >= 200 && d <= 400, `delay ${d}`);
  }
});

test('close codes: 4009 stops, 4001 asks for a token, 1012 moves on at once', () => {
  assert.equal(closePolicy(4009).reconnect, false);
  assert.equal(closePolicy(4003).reconnect, false, 'banned: a reconnect would be refused');
  assert.equal(closePolicy(4004).reconnect, false, 'kicked: the application decides');
  assert.deepEqual([closePolicy(4001).reconnect, closePolicy(4001).newToken], [true, true]);
  assert.deepEqual([closePolicy(1012).nextUrl, closePolicy(1012).immediate], [true, true]);
  assert.equal(closePolicy(1006).reconnect, true);
  assert.equal(closePolicy(1006).nextUrl, false);
  assert.equal(closePolicy(4008).reconnect, true);
});

test('retryable errors: unavailable, rate_limited, and (older servers) internal with a retry hint', () => {
  assert.ok(isRetryable({ code: 'unavailable', retry_after_ms: 100 }));
  assert.ok(isRetryable({ code: 'rate_limited', retry_after_ms: 100 }));
  assert.ok(!isRetryable({ code: 'internal', retry_after_ms: 100 }), 'protocol 1: internal is not retried');
  assert.ok(isRetryable({ code: 'internal', retry_after_ms: 100 }, true), 'an older server: internal with a hint is');
  assert.ok(!isRetryable({ code: 'internal' }, true));
  assert.ok(!isRetryable({ code: 'not_in_room' }));
});

test('welcome rooms with their details, or without (older servers)', () => {
  assert.deepEqual([...welcomeRooms({ rooms: ['r1'] })], [['r1', null]]);
  const d = { room_id: 'r1', kind: 'match', members: ['a', 'b'], last_seq: 4 };
  assert.deepEqual([...welcomeRooms({ rooms: ['r1', 'r2'], room_details: [d] })], [['r1', d], ['r2', null]]);
});

test("welcome: a room already at the server's last seq needs no history; members come from the details", () => {
  const book = new RoomBook();
  book.open('r', ['a', 'b'], 0);
  book.message(msg(1));
  book.open('pub:x', ['a'], null);
  const w = book.welcome({
    rooms: ['r', 'pub:x', 'new'],
    room_details: [
      { room_id: 'r', kind: 'match', members: ['a', 'b', 'c'], last_seq: 1 },
      { room_id: 'pub:x', kind: 'public', members: ['a', 'z'], last_seq: 40 },
      { room_id: 'new', kind: 'match', members: ['a', 'd'], last_seq: 2 },
    ],
  });
  assert.deepEqual(w.fetch.map((f) => [f.room_id, f.after_seq]), [['new', 0]]);
  assert.deepEqual(w.reports.map((r) => [r.room_id, r.recovered, r.missed]), [['r', true, 0], ['pub:x', true, 0]]);
  assert.deepEqual([...book.room('r').members], ['a', 'b', 'c']);
  assert.equal(book.room('pub:x').lastSeq, 40, 'the public room has a baseline now');
  assert.deepEqual(book.message(msg(41, 'pub:x')).deliver.map((m) => m.seq), [41]);
});

test('history paging follows last_seq when the server sends it', () => {
  const book = new RoomBook({ pageLimit: 2 });
  book.open('r', null, 0);
  book.welcome({ rooms: ['r'] });
  const p1 = book.history({ room_id: 'r', messages: [msg(1)], first_seq: 1, last_seq: 3 });
  assert.deepEqual(p1.fetch, { room_id: 'r', after_seq: 1, limit: 2 }, 'a short page, but the store has more');
  const p2 = book.history({ room_id: 'r', messages: [msg(2), msg(3)], first_seq: 2, last_seq: 3 });
  assert.equal(p2.fetch, null, 'a full page that reaches last_seq is the end');
  assert.equal(p2.report.missed, 3);
});

const msg = (seq, room_id = 'r') => ({ type: 'message', room_id, seq, text: `m${seq}`, sender: 'x', msg_id: `m${seq}`, ts: 0 });

test('live messages are delivered once, in order; a gap starts a catch-up', () => {
  const book = new RoomBook({ pageLimit: 3 });
  book.open('r', ['a', 'b'], 0);
  assert.deepEqual(book.message(msg(1)).deliver.map((m) => m.seq), [1]);
  assert.deepEqual(book.message(msg(1)).deliver, [], 'a duplicate is dropped');
  const gap = book.message(msg(4));
  assert.deepEqual(gap.deliver, []);
  assert.deepEqual(gap.fetch, { room_id: 'r', after_seq: 1, limit: 3 });
  assert.deepEqual(book.message(msg(5)).deliver, [], 'buffered during the catch-up');
  const h = book.history({ type: 'history', room_id: 'r', messages: [msg(2), msg(3), msg(4)] });
  assert.deepEqual(h.deliver.map((m) => m.seq), [2, 3, 4]);
  assert.deepEqual(h.fetch, { room_id: 'r', after_seq: 4, limit: 3 }, 'a full page asks for the next');
  const h2 = book.history({ type: 'history', room_id: 'r', messages: [] });
  assert.deepEqual(h2.deliver.map((m) => m.seq), [5], 'then the buffered live message');
  assert.equal(h2.report.recovered, true);
  assert.equal(book.room('r').lastSeq, 5);
});

test('welcome: rooms gone are reported, rooms held catch up from their last seq', () => {
  const book = new RoomBook();
  book.open('r', ['a', 'b'], 0);
  book.open('gone', ['a', 'c'], 0);
  book.message(msg(1));
  book.message(msg(2));
  const w = book.welcome({ type: 'welcome', rooms: ['r', 'new'] });
  assert.deepEqual(w.ended, ['gone']);
  assert.deepEqual(w.fetch.map((f) => [f.room_id, f.after_seq]), [['r', 2], ['new', 0]]);
  const h = book.history({ type: 'history', room_id: 'r', messages: [msg(2), msg(3), msg(4)] });
  assert.deepEqual(h.deliver.map((m) => m.seq), [3, 4], 'an overlap is not delivered twice');
  assert.deepEqual(h.report, { room_id: 'r', after_seq: 2, missed: 2, recovered: true, lost: 0, first_seq: null });
});

test('a trimmed gap is reported from first_seq or from the first message', () => {
  for (const page of [
    { messages: [msg(6), msg(7)], first_seq: 6 },
    { messages: [msg(6), msg(7)] },
  ]) {
    const book = new RoomBook();
    book.open('r', null, 0);
    book.message(msg(1));
    book.welcome({ rooms: ['r'] });
    const h = book.history({ type: 'history', room_id: 'r', ...page });
    assert.deepEqual(h.deliver.map((m) => m.seq), [6, 7]);
    assert.equal(h.report.recovered, false);
    assert.equal(h.report.lost, 4, 'seqs 2..5 are gone');
  }
  const book = new RoomBook();
  book.open('r', null, 0);
  book.welcome({ rooms: ['r'] });
  const h = book.history({ type: 'history', room_id: 'r', messages: [], first_seq: 4 });
  assert.equal(h.report.lost, 3, 'an empty page with first_seq past the next seq');
});

test('outbox: resend after a drop keeps the id; errors go to the send they name', () => {
  const box = new Outbox();
  box.add('c1', 'r', 'one', 0, 1000);
  box.add('c2', 'r', 'two', 0, 1000);
  assert.deepEqual(box.takeQueued().map((e) => e.id), ['c1', 'c2']);
  assert.deepEqual(box.takeQueued(), [], 'in flight, not written twice');
  box.disconnected();
  assert.deepEqual(box.takeQueued().map((e) => e.id), ['c1', 'c2'], 'written again with the same ids');
  const r = box.error({ type: 'error', code: 'not_in_room', client_msg_id: 'c2', action: 'send' }, 10);
  assert.equal(r.entry.id, 'c2');
  assert.equal(r.fail, true);
  const u = box.error({ type: 'error', code: 'unavailable', retry_after_ms: 300, client_msg_id: 'c1' }, 10);
  assert.equal(u.retryInMs, 300);
  assert.deepEqual(box.takeQueued(), [], 'waiting for its retry time');
  box.retryDue('c1');
  assert.deepEqual(box.takeQueued().map((e) => e.id), ['c1']);
  assert.equal(box.ack({ type: 'ack', client_msg_id: 'c1' }).id, 'c1');
  assert.equal(box.entries.size, 0);
});

test('outbox: without an echoed id, an error of a send goes to the oldest in flight; deadlines hold', () => {
  const box = new Outbox();
  box.add('c1', 'r', 'one', 0, 1000);
  box.takeQueued();
  assert.equal(box.error({ type: 'error', code: 'too_large', action: 'send' }, 0).entry.id, 'c1');
  box.add('c3', 'r', 'three', 0, 100);
  const late = box.error({ type: 'error', code: 'unavailable', retry_after_ms: 50, client_msg_id: 'c3' }, 200);
  assert.equal(late.fail, true, 'past the deadline a retryable error fails the send');
  box.add('c4', 'r', 'four', 0, 100);
  assert.deepEqual(box.expire(100).map((e) => e.id), ['c4']);
});

// The SDK's rules without I/O: reconnect policy, per-room state with catch-up, and the
// outbox of sends waiting for their `ack`. Nothing here touches a socket or a timer;
// the client (client.js) feeds frames in and carries out what comes back, so every
// rule is unit-tested in microseconds (test/core.test.mjs).

/** Default reconnect backoff: 250 ms doubling to 10 s, each delay jittered. */
export const DEFAULT_BACKOFF = Object.freeze({ initialMs: 250, maxMs: 10_000, factor: 2, jitter: 0.5 });

/**
 * The delay before reconnect attempt `attempt` (0 = first): exponential, capped, and
 * jittered down by up to `jitter` of itself so that many clients dropped by one node
 * do not all come back in the same instant.
 */
export function backoffDelay(attempt, backoff = DEFAULT_BACKOFF, random = Math.random) {
  const { initialMs, maxMs, factor, jitter } = { ...DEFAULT_BACKOFF, ...backoff };
  const full = Math.min(maxMs, initialMs * factor ** Math.max(0, attempt));
  return Math.round(full * (1 - jitter * random()));
}

/**
 * What to do after the socket closed with `code`.
 * - `reconnect`: try again at all;
 * - `newToken`: ask `getToken()` for a fresh token first (4001);
 * - `nextUrl`: go to the next URL of the node list rather than the same node;
 * - `immediate`: the first attempt goes at once (a draining node, 1012).
 */
export function closePolicy(code) {
  switch (code) {
    case 4009: // replaced by a newer connection of the same user: never fight it
      return { reconnect: false, newToken: false, nextUrl: false, immediate: false, reason: 'replaced' };
    case 4003: // banned by an operator: reconnecting would only be refused
      return { reconnect: false, newToken: false, nextUrl: false, immediate: false, reason: 'banned' };
    case 4004: // disconnected by an operator: leave it to the application
      return { reconnect: false, newToken: false, nextUrl: false, immediate: false, reason: 'kicked' };
    case 4001:
      return { reconnect: true, newToken: true, nextUrl: false, immediate: false, reason: 'unauthorized' };
    case 1012: // draining: another node can take us now
      return { reconnect: true, newToken: false, nextUrl: true, immediate: true, reason: 'restarting' };
    case 1013: // node full
      return { reconnect: true, newToken: false, nextUrl: true, immediate: false, reason: 'full' };
    case 1002:
    case 1007:
      return { reconnect: false, newToken: false, nextUrl: false, immediate: false, reason: 'protocol_error' };
    default:
      return { reconnect: true, newToken: false, nextUrl: false, immediate: false, reason: 'dropped' };
  }
}

/**
 * Error codes a `send` is retried after (with the same `client_msg_id`). `legacy`: the
 * server predates protocol 1, when a retryable failure was `internal` with a hint.
 */
export function isRetryable(err, legacy = false) {
  if (err.code === 'unavailable' || err.code === 'rate_limited') return true;
  return legacy && err.code === 'internal' && typeof err.retry_after_ms === 'number';
}

/**
 * The rooms of a `welcome`: id -> `{members, last_seq, kind}` from `room_details`, or
 * null for a room listed without details (older servers, or a room too busy to say).
 */
export function welcomeRooms(welcome) {
  const details = new Map();
  for (const d of Array.isArray(welcome.room_details) ? welcome.room_details : []) {
    if (d && typeof d.room_id === 'string') details.set(d.room_id, d);
  }
  const out = new Map();
  for (const id of welcome.rooms || []) {
    if (typeof id === 'string') out.set(id, details.get(id) ?? null);
  }
  return out;
}

/**
 * Per-room state: members, the highest `seq` delivered, and the catch-up in progress.
 * Invariant: for each room, messages leave `RoomBook` (in `deliver`) once each, in
 * strictly increasing `seq`, whether they came live or from `history`.
 */
export class RoomBook {
  /** @param {{ pageLimit?: number }} [opts] */
  constructor(opts = {}) {
    this.pageLimit = opts.pageLimit ?? 200;
    /** @type {Map<string, {id: string, members: Set<string>, lastSeq: number|null, catchUp: null | {from: number, delivered: number, lost: number, firstSeq: number|null, buffer: Map<number, any>}}>} */
    this.rooms = new Map();
  }

  room(id) {
    return this.rooms.get(id);
  }

  /** A room the user is now in; `lastSeq` 0 for new match rooms, null when unknown. */
  open(id, members, lastSeq = 0) {
    let r = this.rooms.get(id);
    if (!r) {
      r = { id, members: new Set(), lastSeq, catchUp: null };
      this.rooms.set(id, r);
    }
    if (members) r.members = new Set(members);
    return r;
  }

  close(id) {
    return this.rooms.delete(id);
  }

  presence(f) {
    const r = this.rooms.get(f.room_id);
    if (!r) return;
    if (f.status === 'left') r.members.delete(f.user_id);
    else r.members.add(f.user_id);
  }

  /**
   * A (re)connect's `welcome`: rooms we held that it no longer lists ended while we
   * were away; every listed room catches up from its last seq (rooms new to us, e.g.
   * after a page reload, from the start). Returns the `history` requests to send.
   */
  welcome(frame) {
    const listed = welcomeRooms(frame);
    const ended = [];
    for (const id of [...this.rooms.keys()]) {
      if (!listed.has(id)) {
        this.rooms.delete(id);
        ended.push(id);
      }
    }
    const fetch = [];
    const reports = [];
    for (const [id, detail] of listed) {
      const r = this.open(id, detail ? detail.members : null, 0);
      r.catchUp = null;
      const serverLast = detail && typeof detail.last_seq === 'number' ? detail.last_seq : null;
      if (r.lastSeq === null && serverLast !== null) r.lastSeq = serverLast; // a baseline at last
      // Nothing to fetch when we have the room's newest seq (later ones follow live),
      // or no baseline to fetch from (a public room joined before any message).
      if (r.lastSeq === null || (serverLast !== null && r.lastSeq >= serverLast)) {
        reports.push({ room_id: id, after_seq: r.lastSeq ?? 0, missed: 0, recovered: true, lost: 0, first_seq: null });
        continue;
      }
      fetch.push(this.#startCatchUp(r));
    }
    return { ended, fetch, reports };
  }

  #startCatchUp(r) {
    r.catchUp = { from: r.lastSeq, delivered: 0, lost: 0, firstSeq: null, buffer: new Map() };
    return { room_id: r.id, after_seq: r.lastSeq, limit: this.pageLimit };
  }

  /**
   * A live `message`. Returns what to hand to the application now, and a `history`
   * request when the message shows a gap (then it waits in the catch-up buffer).
   */
  message(m) {
    const r = this.rooms.get(m.room_id);
    if (!r) return { deliver: [m], fetch: null }; // not a room we track (e.g. after leave)
    if (r.catchUp) {
      if (m.seq > (r.lastSeq ?? 0)) r.catchUp.buffer.set(m.seq, m);
      return { deliver: [], fetch: null };
    }
    if (r.lastSeq === null || m.seq === r.lastSeq + 1) {
      r.lastSeq = m.seq;
      return { deliver: [m], fetch: null };
    }
    if (m.seq <= r.lastSeq) return { deliver: [], fetch: null }; // seen already
    const fetch = this.#startCatchUp(r);
    r.catchUp.buffer.set(m.seq, m);
    return { deliver: [], fetch };
  }

  /**
   * A `history` page for a room in catch-up. Returns messages to deliver, the next
   * page to ask for, and, once the room is caught up, its report:
   * `{room_id, after_seq, missed, recovered, lost, first_seq}`.
   */
  history(frame) {
    const r = this.rooms.get(frame.room_id);
    if (!r || !r.catchUp) return { deliver: [], fetch: null, report: null };
    const c = r.catchUp;
    const msgs = (frame.messages || []).filter((m) => m && typeof m.seq === 'number').sort((a, b) => a.seq - b.seq);
    const deliver = [];
    const firstSeq = typeof frame.first_seq === 'number' ? frame.first_seq : null;
    if (firstSeq !== null && c.firstSeq === null) c.firstSeq = firstSeq;
    // What the server no longer has shows as a first available seq past the next one
    // we need (seqs have no gaps): `first_seq` says it directly, and for a server that
    // does not send it, the first message of the page does.
    const oldest = msgs.length ? msgs[0].seq : firstSeq;
    if (oldest !== null && oldest > r.lastSeq + 1) {
      c.lost += oldest - 1 - r.lastSeq;
      r.lastSeq = oldest - 1;
    }
    for (const m of msgs) {
      if (m.seq <= r.lastSeq) continue;
      if (m.seq > r.lastSeq + 1) c.lost += m.seq - r.lastSeq - 1; // a hole inside a page
      r.lastSeq = m.seq;
      c.delivered += 1;
      deliver.push(m);
    }
    // More pages while the store has newer messages than this page (`last_seq`; for
    // servers without it, while pages come back full).
    const more = typeof frame.last_seq === 'number' ? msgs.length > 0 && r.lastSeq < frame.last_seq : msgs.length >= this.pageLimit;
    if (more) {
      return { deliver, fetch: { room_id: r.id, after_seq: r.lastSeq, limit: this.pageLimit }, report: null };
    }
    // Caught up with the store: hand over live messages that came meanwhile.
    const buffered = [...c.buffer.values()].sort((a, b) => a.seq - b.seq);
    for (const m of buffered) {
      if (m.seq <= r.lastSeq) continue;
      if (m.seq > r.lastSeq + 1) {
        // A live message beyond what the store returned: ask again from here.
        c.buffer = new Map(buffered.filter((x) => x.seq > r.lastSeq).map((x) => [x.seq, x]));
        return { deliver, fetch: { room_id: r.id, after_seq: r.lastSeq, limit: this.pageLimit }, report: null };
      }
      r.lastSeq = m.seq;
      c.delivered += 1;
      deliver.push(m);
    }
    r.catchUp = null;
    const report = {
      room_id: r.id,
      after_seq: c.from,
      missed: c.delivered,
      recovered: c.lost === 0,
      lost: c.lost,
      first_seq: c.firstSeq,
    };
    return { deliver, fetch: null, report };
  }
}

/**
 * Sends waiting for their `ack`. Each keeps its `client_msg_id` across retries, so a
 * server that already stored it answers with the original `ack` instead of storing it
 * again. States: `queued` (to be written when connected), `inflight` (written on the
 * current connection), `waiting` (a retryable error asked to wait `retry_after_ms`).
 */
export class Outbox {
  constructor() {
    /** @type {Map<string, {id: string, room_id: string, text: string, deadline: number, state: 'queued'|'inflight'|'waiting', attempts: number, retryAt: number}>} */
    this.entries = new Map();
  }

  add(id, room_id, text, now, timeoutMs) {
    if (this.entries.has(id)) throw new Error(`client_msg_id ${id} is already pending`);
    const e = { id, room_id, text, deadline: now + timeoutMs, state: 'queued', attempts: 0, retryAt: 0 };
    this.entries.set(id, e);
    return e;
  }

  /** Entries to write now (connected): the queued ones, oldest first; marks them in flight. */
  takeQueued(sendable = () => true) {
    const out = [];
    for (const e of this.entries.values()) {
      if (e.state === 'queued' && sendable(e.room_id)) {
        e.state = 'inflight';
        e.attempts += 1;
        out.push(e);
      }
    }
    return out;
  }

  /** The in-flight entry with the longest text (the likely cause of a 1009 close). */
  largestInFlight() {
    let best = null;
    for (const e of this.entries.values()) {
      if (e.state === 'inflight' && (!best || e.text.length > best.text.length)) best = e;
    }
    return best;
  }

  /** The connection dropped: whatever was in flight may or may not be stored; send again. */
  disconnected() {
    for (const e of this.entries.values()) if (e.state === 'inflight') e.state = 'queued';
  }

  ack(frame) {
    const e = frame.client_msg_id !== undefined ? this.entries.get(frame.client_msg_id) : undefined;
    if (e) this.entries.delete(e.id);
    return e;
  }

  /**
   * An `error` frame: the entry it belongs to (by the echoed `client_msg_id`; for a
   * server that does not echo it, the oldest send in flight) and what to do:
   * `{entry, retryInMs}` to retry, `{entry, fail}` to give up, or null when no send fits.
   */
  error(frame, now, legacy = false) {
    let e = frame.client_msg_id !== undefined ? this.entries.get(frame.client_msg_id) : undefined;
    if (!e && frame.client_msg_id === undefined && frame.action === 'send') {
      e = [...this.entries.values()].find((x) => x.state === 'inflight');
    }
    if (!e) return null;
    if (isRetryable(frame, legacy) && now < e.deadline) {
      e.state = 'waiting';
      const wait = Math.max(0, Math.min(frame.retry_after_ms ?? 1000, e.deadline - now));
      e.retryAt = now + wait;
      return { entry: e, retryInMs: wait };
    }
    this.entries.delete(e.id);
    return { entry: e, fail: true };
  }

  /** A `waiting` entry's time came: queue it again. */
  retryDue(id) {
    const e = this.entries.get(id);
    if (e && e.state === 'waiting') e.state = 'queued';
    return e;
  }

  /** Entries past their deadline, removed. */
  expire(now) {
    const out = [];
    for (const e of this.entries.values()) if (now >= e.deadline) out.push(e);
    for (const e of out) this.entries.delete(e.id);
    return out;
  }

  /** Entries for rooms the user no longer holds, removed. */
  dropRooms(isHeld) {
    const out = [];
    for (const e of this.entries.values()) if (!isHeld(e.room_id)) out.push(e);
    for (const e of out) this.entries.delete(e.id);
    return out;
  }
}

// The connection: one WebSocket at a time to one of the configured URLs, reconnecting
// with jittered exponential backoff, catching every room up from `history` after each
// reconnect, and resending unacknowledged messages with their original
// `client_msg_id`. The rules live in core.js; this file does the I/O and the timers.

import { Outbox, RoomBook, backoffDelay, closePolicy, DEFAULT_BACKOFF } from './core.js';

/** An `error` frame from the server (or a local failure: `timeout`, `closed`, `not_connected`). */
export class RendezvousError extends Error {
  constructor(code, message, frame = null) {
    super(message);
    this.name = 'RendezvousError';
    this.code = code;
    this.frame = frame;
    this.retryAfterMs = frame?.retry_after_ms;
    this.clientMsgId = frame?.client_msg_id;
  }
}

/** Which frame answers an action (the first one that comes), for the promise-returning calls. */
const ANSWERS = {
  find_match: ['searching'],
  next: ['searching'],
  cancel_match: ['match_cancelled', 'match_found'],
  join: ['joined'],
  leave: ['left'],
  block: ['blocked'],
  refresh: ['refreshed'],
  report: ['reported'],
};

let idCounter = 0;
function newClientMsgId() {
  const rand = globalThis.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  idCounter += 1;
  return `c-${rand}-${idCounter}`;
}

function withQuery(url, key, value) {
  const u = new URL(url);
  u.searchParams.set(key, value);
  return u.toString();
}

export class RendezvousClient {
  /** @param {import('./index.js').ClientOptions} options */
  constructor(options) {
    const urls = options.urls ?? (options.url ? [options.url] : []);
    if (!urls.length) throw new TypeError('RendezvousClient needs `url` or `urls`');
    this.urls = urls.map(String);
    this.options = {
      sendTimeoutMs: 60_000,
      requestTimeoutMs: 15_000,
      connectTimeoutMs: 10_000,
      resumeSearch: true,
      ...options,
      backoff: { ...DEFAULT_BACKOFF, ...(options.backoff || {}) },
    };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function') {
      throw new TypeError('no WebSocket: pass `WebSocket` in the options (Node 20: run with --experimental-websocket)');
    }
    /** 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed' */
    this.state = 'idle';
    /** The last `welcome`. */
    this.welcome = null;
    this.userId = null;
    this.urlIndex = 0;
    this.attempt = 0;
    this.book = new RoomBook({ pageLimit: this.options.historyPageLimit ?? 200 });
    this.outbox = new Outbox();
    this.handlers = new Map();
    this.waiters = new Map(); // action -> [{resolve, reject, timer}]
    this.sendWaiters = new Map(); // client_msg_id -> {resolve, reject, timers}
    this.ws = null;
    this.token = options.token ?? null;
    this.lastSearch = null; // the last find_match frame
    this.searching = false;
    this.resumeSearchAfterWelcome = false;
    this.unauthorizedInARow = 0;
    this.retryTimer = null;
    this.connectTimer = null;
    this.readyWaiters = [];
  }

  // ------------------------------------------------------------------ events

  /** Listen to a server frame type (`message`, `match_found`, …) or an SDK event. Returns `off`. */
  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this.handlers.get(type)?.delete(fn);
  }

  once(type, fn) {
    const off = this.on(type, (ev) => {
      off();
      fn(ev);
    });
    return off;
  }

  emit(type, ev) {
    for (const fn of [...(this.handlers.get(type) || [])]) {
      try {
        fn(ev);
      } catch (err) {
        // A listener's bug must not break the connection's bookkeeping.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  /** Resolves with the next event of `type` that passes `filter`, or rejects after `timeoutMs`. */
  waitFor(type, filter = () => true, timeoutMs = this.options.requestTimeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new RendezvousError('timeout', `no ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.on(type, (ev) => {
        if (!filter(ev)) return;
        clearTimeout(timer);
        off();
        resolve(ev);
      });
    });
  }

  // ------------------------------------------------------------------ connection

  /** Connect (if not already) and resolve with the `welcome` of the open session. */
  connect() {
    if (this.state === 'open') return Promise.resolve(this.welcome);
    const ready = new Promise((resolve, reject) => this.readyWaiters.push({ resolve, reject }));
    if (this.state === 'idle' || this.state === 'closed') {
      this.attempt = 0;
      this.#open();
    }
    return ready;
  }

  /** Close for good: no reconnect; pending sends and requests fail with `closed`. */
  close() {
    this.#setClosed(1000, 'closed by the application');
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
  }

  /** Rooms the SDK tracks: id -> `{room_id, members, lastSeq}`. */
  get rooms() {
    const out = new Map();
    for (const r of this.book.rooms.values()) out.set(r.id, this.room(r.id));
    return out;
  }

  room(roomId) {
    const r = this.book.room(roomId);
    return r ? { room_id: r.id, members: [...r.members], lastSeq: r.lastSeq, catchingUp: !!r.catchUp } : undefined;
  }

  /** ICE servers the server gave in `welcome` (empty when it gave none). */
  get iceServers() {
    const w = this.welcome;
    return (w && Array.isArray(w.ice_servers) ? w.ice_servers : []).map(toRtcIceServer);
  }

  /** The HTTP(S) base of the node currently connected to (or the first URL). */
  get httpBase() {
    const u = new URL(this.urls[this.urlIndex] ?? this.urls[0]);
    u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
    u.pathname = '/';
    u.search = '';
    return u.toString().replace(/\/$/, '');
  }

  async #url() {
    let url = this.urls[this.urlIndex % this.urls.length];
    if (this.options.getToken && (this.token === null || this.needNewToken)) {
      this.token = await this.options.getToken();
      this.needNewToken = false;
    }
    if (this.token) url = withQuery(url, 'token', this.token);
    else if (this.options.user) url = withQuery(url, 'user', this.options.user);
    return url;
  }

  async #open() {
    this.#setState('connecting', { url: this.urls[this.urlIndex % this.urls.length] });
    let url;
    try {
      url = await this.#url();
    } catch (err) {
      this.emit('warning', { message: `getToken failed: ${err?.message ?? err}` });
      return this.#scheduleReconnect(closePolicy(4001), null);
    }
    if (this.state !== 'connecting') return; // closed meanwhile
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (err) {
      this.emit('warning', { message: `cannot open ${url}: ${err?.message ?? err}` });
      return this.#scheduleReconnect(closePolicy(1006), null);
    }
    this.ws = ws;
    let opened = false;
    clearTimeout(this.connectTimer);
    this.connectTimer = setTimeout(() => {
      if (this.ws === ws && this.state === 'connecting') ws.close(4000, 'connect timeout');
    }, this.options.connectTimeoutMs);
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (e) => {
      if (this.ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(typeof e.data === 'string' ? e.data : String(e.data));
      } catch {
        this.emit('warning', { message: 'a frame that is not JSON was ignored' });
        return;
      }
      this.#onFrame(frame);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearTimeout(this.connectTimer);
      this.#onClose(e.code, e.reason, opened);
    };
    ws.onerror = () => {}; // a close event follows
  }

  #onClose(code, reason, opened) {
    const wasOpen = this.state === 'open';
    if (code === 1009) {
      // The server refused a frame as too large: the biggest send in flight caused it,
      // and writing it again would only repeat the close.
      const biggest = this.outbox.largestInFlight();
      if (biggest) {
        this.outbox.entries.delete(biggest.id);
        this.#settleSend(biggest.id, null, new RendezvousError('too_large', 'the message was too large for the server (close 1009)'));
      }
    }
    this.outbox.disconnected();
    for (const r of this.book.rooms.values()) r.catchUp = null;
    if (this.searching) this.resumeSearchAfterWelcome = true; // a closed socket withdraws the search
    this.searching = false;
    this.#failWaiters(new RendezvousError('disconnected', `connection closed (${code})`));
    const policy = closePolicy(code);
    this.emit('disconnected', { code, reason, wasOpen });
    if (this.state === 'closed') return;
    if (code === 4001) {
      this.unauthorizedInARow += 1;
      // Without getToken there is nothing new to try; with it, give up after a few refusals.
      if (!this.options.getToken || this.unauthorizedInARow > 3) return this.#setClosed(code, 'unauthorized');
      this.needNewToken = true;
    }
    if (!policy.reconnect) return this.#setClosed(code, policy.reason);
    // Outside browsers a refused token is an HTTP 401, which looks like a failed
    // connection: after a few of those in a row, ask for a fresh token as well.
    if (!opened && this.options.getToken && this.attempt >= 2) this.needNewToken = true;
    if (!opened || policy.nextUrl) this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    this.#scheduleReconnect(policy, code);
  }

  #scheduleReconnect(policy, code) {
    if (this.state === 'closed') return;
    const delay = policy.immediate && this.attempt === 0 ? 0 : backoffDelay(this.attempt, this.options.backoff);
    this.attempt += 1;
    this.#setState('reconnecting', { code, retryInMs: delay, url: this.urls[this.urlIndex % this.urls.length] });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.#open(), delay);
  }

  /** Reconnect at once (e.g. the browser came back online), skipping the backoff wait. */
  reconnectNow() {
    if (this.state === 'closed' || this.state === 'idle') return this.connect();
    clearTimeout(this.retryTimer);
    const ws = this.ws;
    if (ws) {
      ws.close(4000, 'reconnect');
    } else if (this.state === 'reconnecting') {
      this.#open();
    }
    return undefined;
  }

  #setState(state, detail = {}) {
    this.state = state;
    this.emit('state', { state, ...detail });
  }

  #setClosed(code, reason) {
    clearTimeout(this.retryTimer);
    clearTimeout(this.connectTimer);
    const err = new RendezvousError('closed', `closed: ${reason}`);
    for (const w of this.readyWaiters.splice(0)) w.reject(err);
    this.#failWaiters(err);
    for (const id of [...this.outbox.entries.keys()]) {
      this.outbox.entries.delete(id);
      this.#settleSend(id, null, err);
    }
    if (this.state !== 'closed') this.#setState('closed', { code, reason });
  }

  #write(frame) {
    if (!this.ws || this.state !== 'open') return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  // ------------------------------------------------------------------ frames

  #onFrame(f) {
    this.emit('frame', f);
    switch (f.type) {
      case 'welcome':
        return this.#onWelcome(f);
      case 'searching':
        this.searching = true;
        break;
      case 'match_found':
        this.searching = false;
        this.book.open(f.room_id, f.members, 0);
        break;
      case 'no_match_found':
      case 'match_cancelled':
        this.searching = false;
        break;
      case 'joined':
        this.book.open(f.room_id, f.members, null);
        break;
      case 'left':
      case 'room_closed':
        this.book.close(f.room_id);
        for (const e of this.outbox.dropRooms((id) => this.book.rooms.has(id))) {
          this.#settleSend(e.id, null, new RendezvousError('not_in_room', `room ${e.room_id} was left or closed`));
        }
        break;
      case 'presence':
        this.book.presence(f);
        break;
      case 'ack':
        return this.#onAck(f);
      case 'message':
        return this.#onMessage(f);
      case 'history':
        return this.#onHistory(f);
      case 'error':
        return this.#onError(f);
      default:
        break;
    }
    this.#answer(f);
    this.emit(f.type, f);
  }

  #onWelcome(f) {
    this.welcome = f;
    this.userId = f.user_id;
    this.attempt = 0;
    this.unauthorizedInARow = 0;
    clearTimeout(this.connectTimer);
    const { ended, fetch, reports } = this.book.welcome(f);
    this.#setState('open', { node: f.node, url: this.urls[this.urlIndex % this.urls.length] });
    this.emit('welcome', f);
    for (const w of this.readyWaiters.splice(0)) w.resolve(f);
    for (const room_id of ended) {
      this.emit('room_ended', { room_id });
    }
    for (const e of this.outbox.dropRooms((id) => this.book.rooms.has(id))) {
      this.#settleSend(e.id, null, new RendezvousError('not_in_room', `room ${e.room_id} ended while offline`));
    }
    for (const req of fetch) this.#write({ action: 'history', ...req });
    for (const report of reports) this.emit('recovered', report);
    this.#flushOutbox();
    if (this.resumeSearchAfterWelcome && this.lastSearch && this.options.resumeSearch) {
      this.#write(this.lastSearch);
    }
    this.resumeSearchAfterWelcome = false;
  }

  #onMessage(f) {
    const { deliver, fetch } = this.book.message(f);
    if (fetch) this.#write({ action: 'history', ...fetch });
    for (const m of deliver) this.emit('message', m);
  }

  #onHistory(f) {
    const r = this.book.room(f.room_id);
    const own = r && r.catchUp;
    if (own) {
      const { deliver, fetch, report } = this.book.history(f);
      for (const m of deliver) this.emit('message', m);
      if (fetch) this.#write({ action: 'history', ...fetch });
      if (report) this.emit('recovered', report);
    }
    this.emit('history', f);
  }

  #onAck(f) {
    const e = this.outbox.ack(f);
    this.emit('ack', f);
    if (e) this.#settleSend(e.id, f, null);
  }

  #onError(f) {
    const legacy = !(this.welcome && this.welcome.protocol >= 1);
    const routed = this.outbox.error(f, Date.now(), legacy);
    if (routed) {
      const { entry } = routed;
      if (routed.fail) {
        this.#settleSend(entry.id, null, new RendezvousError(f.code, f.message, f));
      } else {
        this.emit('retrying', { client_msg_id: entry.id, room_id: entry.room_id, code: f.code, retryInMs: routed.retryInMs });
        const w = this.sendWaiters.get(entry.id);
        if (w) {
          clearTimeout(w.retryTimer);
          w.retryTimer = setTimeout(() => {
            this.outbox.retryDue(entry.id);
            this.#flushOutbox();
          }, routed.retryInMs);
        }
      }
    } else if (f.action && this.waiters.get(f.action)?.length) {
      const w = this.waiters.get(f.action).shift();
      clearTimeout(w.timer);
      w.reject(new RendezvousError(f.code, f.message, f));
    }
    if (f.code === 'token_expired' && this.options.getToken) this.#refresh();
    if (f.action === 'find_match' || f.action === 'next') this.searching = f.code === 'already_searching';
    this.emit('error', f);
  }

  async #refresh() {
    try {
      this.token = await this.options.getToken();
      this.#write({ action: 'refresh', token: this.token });
    } catch (err) {
      this.emit('warning', { message: `getToken failed: ${err?.message ?? err}` });
    }
  }

  #answer(f) {
    for (const [action, types] of Object.entries(ANSWERS)) {
      if (!types.includes(f.type)) continue;
      const queue = this.waiters.get(action);
      if (!queue?.length) continue;
      const w = queue.shift();
      clearTimeout(w.timer);
      w.resolve(f);
      return;
    }
  }

  #failWaiters(err) {
    for (const queue of this.waiters.values()) {
      for (const w of queue.splice(0)) {
        clearTimeout(w.timer);
        w.reject(err);
      }
    }
  }

  // ------------------------------------------------------------------ actions

  /** Send an action that has an answer frame; resolves with it, rejects on its `error`. */
  #request(frame) {
    return new Promise((resolve, reject) => {
      if (!this.#write(frame)) {
        reject(new RendezvousError('not_connected', `not connected: ${frame.action} was not sent`));
        return;
      }
      const queue = this.waiters.get(frame.action) ?? [];
      this.waiters.set(frame.action, queue);
      const w = { resolve, reject, timer: null };
      w.timer = setTimeout(() => {
        const i = queue.indexOf(w);
        if (i >= 0) queue.splice(i, 1);
        reject(new RendezvousError('timeout', `no answer to ${frame.action}`));
      }, this.options.requestTimeoutMs);
      queue.push(w);
    });
  }

  /** Search for a match. Resolves with `searching`; `match_found` / `no_match_found` follow as events. */
  findMatch(criteria) {
    const frame = { action: 'find_match', interests: [], ...criteria };
    this.lastSearch = frame;
    return this.#request(frame);
  }

  cancel() {
    this.resumeSearchAfterWelcome = false;
    return this.#request({ action: 'cancel_match' });
  }

  /** Leave the current match room and search again with the last criteria. */
  next() {
    return this.#request({ action: 'next' });
  }

  block(userId) {
    return this.#request({ action: 'block', user_id: userId });
  }

  /** Report a current or recent partner to the operators (the room's last messages go with it). */
  report(userId, roomId, reason) {
    const frame = { action: 'report', user_id: userId, room_id: roomId };
    if (reason !== undefined) frame.reason = reason;
    return this.#request(frame);
  }

  join(roomId) {
    return this.#request({ action: 'join', room_id: roomId });
  }

  leave(roomId) {
    return this.#request({ action: 'leave', room_id: roomId });
  }

  /** Typing indicator; returns false when not connected (it is not worth queuing). */
  typing(roomId, active) {
    return this.#write({ action: 'typing', room_id: roomId, active: !!active });
  }

  read(roomId, seq) {
    return this.#write({ action: 'read', room_id: roomId, seq });
  }

  /** Relay a signaling payload (an object) to `to`, or to every other member. */
  signal(roomId, payload, to) {
    const frame = { action: 'signal', room_id: roomId, payload };
    if (to !== undefined) frame.to = to;
    return this.#write(frame);
  }

  /** Ask for a page of history; the answer comes as a `history` event (and resolves this). */
  history(roomId, afterSeq = 0, limit) {
    const frame = { action: 'history', room_id: roomId, after_seq: afterSeq };
    if (limit !== undefined) frame.limit = limit;
    if (!this.#write(frame)) return Promise.reject(new RendezvousError('not_connected', 'not connected'));
    return this.waitFor('history', (h) => h.room_id === roomId);
  }

  /**
   * Send a chat message. Resolves with its `ack` (`seq`, `msg_id`). Survives
   * disconnects: it is written again after each reconnect with the same
   * `client_msg_id` until acknowledged, and retried after `unavailable` /
   * `rate_limited` waits, until `sendTimeoutMs`; then it rejects with `timeout`.
   */
  send(roomId, text, opts = {}) {
    const id = opts.clientMsgId ?? newClientMsgId();
    const timeoutMs = opts.timeoutMs ?? this.options.sendTimeoutMs;
    return new Promise((resolve, reject) => {
      if (this.state === 'closed' || this.state === 'idle') {
        reject(new RendezvousError('not_connected', 'connect() first'));
        return;
      }
      try {
        this.outbox.add(id, roomId, text, Date.now(), timeoutMs);
      } catch (err) {
        reject(err);
        return;
      }
      const w = { resolve, reject, retryTimer: null, timeout: null, id };
      w.timeout = setTimeout(() => {
        if (this.outbox.entries.delete(id)) {
          this.#settleSend(id, null, new RendezvousError('timeout', `no ack for ${id} within ${timeoutMs} ms`));
        }
      }, timeoutMs);
      this.sendWaiters.set(id, w);
      this.emit('sending', { client_msg_id: id, room_id: roomId, text });
      this.#flushOutbox();
    });
  }

  /** Sends waiting for an `ack`: `{client_msg_id, room_id, text, state}`. */
  get pendingSends() {
    return [...this.outbox.entries.values()].map((e) => ({ client_msg_id: e.id, room_id: e.room_id, text: e.text, state: e.state }));
  }

  #flushOutbox() {
    if (this.state !== 'open') return;
    for (const e of this.outbox.takeQueued()) {
      this.#write({ action: 'send', room_id: e.room_id, text: e.text, client_msg_id: e.id });
    }
  }

  #settleSend(id, ack, err) {
    const w = this.sendWaiters.get(id);
    if (!w) return;
    this.sendWaiters.delete(id);
    clearTimeout(w.timeout);
    clearTimeout(w.retryTimer);
    if (err) {
      this.emit('send_failed', { client_msg_id: id, error: err });
      w.reject(err);
    } else w.resolve(ack);
  }
}

/** A server's ICE server entry (`urls`, `username`, `credential`) as RTCIceServer. */
export function toRtcIceServer(s) {
  if (typeof s === 'string') return { urls: s };
  const out = { urls: s.urls ?? s.url };
  if (s.username != null) out.username = s.username;
  if (s.credential != null) out.credential = s.credential;
  return out;
}

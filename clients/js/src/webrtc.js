// Video calls between room members: WebRTC with "perfect negotiation" over the
// engine's `signal` relay. Either side may (re)negotiate at any time; when both offer
// at once, the polite side (the greater user id, so both agree without talking) rolls
// its offer back and answers. ICE servers come from the server (`welcome.ice_servers`
// or `GET /api/client-config`), so calls work across NATs through TURN, and
// `relayOnly` keeps the user's own address from the partner.
//
// Signal payloads: {kind:'description', description:{type, sdp}},
// {kind:'candidate', candidate}, {kind:'hangup'}.

import { toRtcIceServer } from './client.js';

class Emitter {
  constructor() {
    this.handlers = new Map();
  }
  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    return () => this.handlers.get(type)?.delete(fn);
  }
  emit(type, ev) {
    for (const fn of [...(this.handlers.get(type) || [])]) fn(ev);
  }
}

/** One call in one room with one peer. */
export class Call extends Emitter {
  constructor(calls, roomId, peer, stream) {
    super();
    this.calls = calls;
    this.client = calls.client;
    this.roomId = roomId;
    this.peer = peer;
    this.stream = stream || null;
    this.tracksAdded = false;
    this.polite = String(this.client.userId) > String(peer);
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.ended = false;
    this.chain = Promise.resolve();
    const config = { iceServers: calls.iceServersInUse };
    if (calls.relayOnly) config.iceTransportPolicy = 'relay';
    const pc = new calls.RTCPeerConnection(config);
    this.pc = pc;
    pc.onicecandidate = (e) => e.candidate && this.#signal({ kind: 'candidate', candidate: e.candidate.toJSON() });
    pc.ontrack = (e) => this.emit('track', { track: e.track, streams: e.streams });
    pc.onconnectionstatechange = () => {
      this.emit('state', pc.connectionState);
      if (pc.connectionState === 'failed') this.hangup();
    };
    pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        this.#signal({ kind: 'description', description: pc.localDescription.toJSON() });
      } catch (err) {
        this.emit('warning', err);
      } finally {
        this.makingOffer = false;
      }
    };
  }

  #signal(payload) {
    // Not after the call ended, nor into a room the user has left (it would be refused).
    if (!this.ended && this.client.room(this.roomId)) this.client.signal(this.roomId, payload, this.peer);
  }

  /** Add the local stream's tracks (once). The caller does it at once; the callee after the offer. */
  addLocalTracks() {
    if (this.tracksAdded || !this.stream) return;
    this.tracksAdded = true;
    for (const t of this.stream.getTracks()) this.pc.addTrack(t, this.stream);
  }

  /** Feed a signal payload from the peer (serialized: descriptions apply in order). */
  handle(payload) {
    this.chain = this.chain.then(() => this.#handle(payload)).catch((err) => this.emit('warning', err));
    return this.chain;
  }

  async #handle(p) {
    if (this.ended) return;
    const pc = this.pc;
    if (p.kind === 'description' && p.description) {
      const d = p.description;
      const collision = d.type === 'offer' && (this.makingOffer || pc.signalingState !== 'stable');
      this.ignoreOffer = !this.polite && collision;
      if (this.ignoreOffer) return;
      await pc.setRemoteDescription(d); // rolls back our own offer when polite
      if (d.type === 'offer') {
        this.addLocalTracks();
        await pc.setLocalDescription();
        this.#signal({ kind: 'description', description: pc.localDescription.toJSON() });
      }
    } else if (p.kind === 'candidate' && p.candidate) {
      try {
        await pc.addIceCandidate(p.candidate);
      } catch (err) {
        if (!this.ignoreOffer) throw err;
      }
    } else if (p.kind === 'hangup') {
      this.#end('remote');
    }
  }

  /** End the call; the peer is told unless `notify` is false. */
  hangup({ notify = true } = {}) {
    if (this.ended) return;
    if (notify) this.#signal({ kind: 'hangup' });
    this.#end('local');
  }

  #end(by) {
    if (this.ended) return;
    this.ended = true;
    this.pc.close();
    this.calls.calls.delete(this.roomId);
    this.emit('ended', { by });
  }
}

/**
 * The calls of one client: `call(roomId, stream)` starts one; an offer for a room
 * without a call is an `incoming` event with `accept(stream)` / `decline()`, or is
 * accepted at once when `autoAnswer` is on (off by default: nobody should be on
 * camera without saying yes).
 */
export class Calls extends Emitter {
  constructor(client, options = {}) {
    super();
    this.client = client;
    this.RTCPeerConnection = options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    this.autoAnswer = options.autoAnswer ?? false;
    this.getStream = options.getStream ?? null;
    this.relayOnly = options.relayOnly ?? false;
    this.fixedIceServers = options.iceServers ?? null;
    this.iceServersInUse = [];
    this.calls = new Map(); // roomId -> Call
    this.incoming = new Map(); // roomId -> {from, payloads}
    this.off = client.on('signal', (f) => this.#onSignal(f));
    this.offClosed = [
      client.on('room_closed', (f) => this.#roomGone(f.room_id)),
      client.on('left', (f) => this.#roomGone(f.room_id)),
      client.on('room_ended', (f) => this.#roomGone(f.room_id)),
    ];
  }

  /**
   * The ICE servers for new calls: the ones given in the options, else the server's
   * (`welcome.ice_servers`, else `GET /api/client-config`).
   */
  async iceServers() {
    if (this.fixedIceServers) return (this.iceServersInUse = this.fixedIceServers);
    const w = this.client.welcome || {};
    if (Array.isArray(w.ice_servers)) return (this.iceServersInUse = this.client.iceServers);
    try {
      const res = await fetch(`${this.client.httpBase}/api/client-config`, { cache: 'no-store' });
      if (res.ok) {
        const cfg = await res.json();
        if (Array.isArray(cfg.ice_servers)) return (this.iceServersInUse = cfg.ice_servers.map(toRtcIceServer));
      }
    } catch {
      // no config endpoint: host candidates only
    }
    return (this.iceServersInUse = []);
  }

  #peerOf(roomId, from) {
    if (from) return from;
    const r = this.client.room(roomId);
    return r ? r.members.find((m) => m !== this.client.userId) : undefined;
  }

  /** Start a call in `roomId` (with the other member, or `to`) sending `stream`. */
  async call(roomId, stream, to) {
    if (this.calls.has(roomId)) return this.calls.get(roomId);
    const peer = this.#peerOf(roomId, to);
    if (!peer) throw new Error(`nobody to call in ${roomId}`);
    await this.iceServers();
    const call = new Call(this, roomId, peer, stream);
    this.calls.set(roomId, call);
    this.emit('call', call);
    call.addLocalTracks(); // fires negotiationneeded: the offer goes out
    return call;
  }

  #onSignal(f) {
    const p = f.payload || {};
    const call = this.calls.get(f.room_id);
    if (call) return void call.handle(p);
    const pending = this.incoming.get(f.room_id);
    if (pending) {
      if (p.kind === 'hangup') {
        this.incoming.delete(f.room_id);
        this.emit('incoming_ended', { room_id: f.room_id, from: f.from });
      } else pending.payloads.push(p);
      return;
    }
    if (p.kind !== 'description' || p.description?.type !== 'offer') return;
    const entry = { from: f.from, payloads: [p] };
    this.incoming.set(f.room_id, entry);
    const accept = async (stream) => {
      if (this.incoming.get(f.room_id) !== entry) throw new Error('the call is no longer ringing');
      this.incoming.delete(f.room_id);
      await this.iceServers();
      const c = new Call(this, f.room_id, f.from, stream);
      this.calls.set(f.room_id, c);
      this.emit('call', c);
      for (const q of entry.payloads) c.handle(q);
      return c;
    };
    const decline = () => {
      if (this.incoming.get(f.room_id) !== entry) return;
      this.incoming.delete(f.room_id);
      this.client.signal(f.room_id, { kind: 'hangup' }, f.from);
    };
    if (this.autoAnswer) {
      Promise.resolve(this.getStream ? this.getStream() : null)
        .then((stream) => accept(stream))
        .catch((err) => this.emit('warning', err));
      return;
    }
    this.emit('incoming', { room_id: f.room_id, from: f.from, accept, decline });
  }

  #roomGone(roomId) {
    this.incoming.delete(roomId);
    const call = this.calls.get(roomId);
    if (call) call.hangup({ notify: false });
  }

  /** Stop listening (calls in progress are hung up). */
  dispose() {
    this.off();
    for (const off of this.offClosed) off();
    for (const c of [...this.calls.values()]) c.hangup();
  }
}

// @rendezvous/client: the Rendezvous engine's client SDK (ESM, no dependencies).
// client.js: the connection, events and actions; core.js: its pure rules;
// webrtc.js: video calls negotiated over `signal`.
export { RendezvousClient, RendezvousError, toRtcIceServer } from './client.js';
export { backoffDelay, closePolicy, isRetryable, DEFAULT_BACKOFF } from './core.js';
export { Calls, Call } from './webrtc.js';
/** The wire protocol version this SDK speaks (`welcome.protocol`). */
export const PROTOCOL_VERSION = 1;

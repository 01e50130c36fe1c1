import type {
  Ack,
  ChatMessage,
  ErrorCode,
  ErrorFrame,
  FindMatch,
  History,
  Joined,
  Left,
  MatchCancelled,
  Refreshed,
  Reported,
  Blocked,
  Searching,
  MatchFound,
  ServerFrame,
  ServerFrameMap,
  Welcome,
} from './protocol.js';

export * from './protocol.js';
export { Calls, Call, CallsOptions, IncomingCall } from './webrtc.js';

/** The wire protocol version this SDK speaks. */
export declare const PROTOCOL_VERSION: 1;

export interface Backoff {
  /** First reconnect delay (ms). Default 250. */
  initialMs?: number;
  /** Longest delay (ms). Default 10000. */
  maxMs?: number;
  /** Growth per attempt. Default 2. */
  factor?: number;
  /** Share of each delay taken off at random (0–1). Default 0.5. */
  jitter?: number;
}

export interface ClientOptions {
  /** One node's WebSocket URL (`wss://host/ws`). */
  url?: string;
  /** Several nodes: the client moves along the list when a node is gone or draining. */
  urls?: string[];
  /** A JWT, sent as `?token=`. */
  token?: string;
  /** Called for the first connect, after close 4001, and on `token_expired` (then sent as `refresh`). */
  getToken?: () => string | Promise<string>;
  /** A user name for servers in anonymous (development) mode, sent as `?user=`. */
  user?: string;
  /** A WebSocket constructor; defaults to the global one. */
  WebSocket?: new (url: string) => WebSocket;
  backoff?: Backoff;
  /** How long a `send` keeps being retried before it rejects with `timeout`. Default 60000. */
  sendTimeoutMs?: number;
  /** How long the promise of `findMatch`, `join`, … waits for its answer. Default 15000. */
  requestTimeoutMs?: number;
  /** A socket that does not open within this is dropped and tried again. Default 10000. */
  connectTimeoutMs?: number;
  /** Search again after a reconnect when a search was running. Default true. */
  resumeSearch?: boolean;
  /** `history` page size used for catch-up. Default 200 (the server's maximum). */
  historyPageLimit?: number;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface StateEvent {
  state: ConnectionState;
  /** The close code that led here (`reconnecting`, `closed`). */
  code?: number | null;
  reason?: string;
  /** `reconnecting`: the wait before the next attempt. */
  retryInMs?: number;
  url?: string;
  /** `open`: the node's name. */
  node?: string;
}

/** A room after a reconnect: what came back from `history`, and what is gone for good. */
export interface RecoveryReport {
  room_id: string;
  /** The last seq the client had before the reconnect. */
  after_seq: number;
  /** Messages delivered by the catch-up. */
  missed: number;
  /** True when nothing was lost. */
  recovered: boolean;
  /** Messages trimmed from the room's history before the client could fetch them. */
  lost: number;
  /** The oldest seq still stored, when the server says. */
  first_seq: number | null;
}

export interface RoomState {
  room_id: string;
  members: string[];
  /** Highest seq delivered; null for a public room joined before any message. */
  lastSeq: number | null;
  catchingUp: boolean;
}

export interface PendingSend {
  client_msg_id: string;
  room_id: string;
  text: string;
  state: 'queued' | 'inflight' | 'waiting';
}

export interface ClientEventMap extends ServerFrameMap {
  /** Every server frame, before the SDK acts on it. */
  frame: ServerFrame;
  state: StateEvent;
  disconnected: { code: number; reason: string; wasOpen: boolean };
  /** A room caught up after a reconnect (or a gap). */
  recovered: RecoveryReport;
  /** A room the user held is gone (not in the new `welcome`). */
  room_ended: { room_id: string };
  /** A send is written (first time). */
  sending: { client_msg_id: string; room_id: string; text: string };
  /** A send got a retryable error and is sent again after `retryInMs`. */
  retrying: { client_msg_id: string; room_id: string; code: ErrorCode; retryInMs: number };
  /** A send gave up. */
  send_failed: { client_msg_id: string; error: RendezvousError };
  warning: { message: string };
}

export declare class RendezvousError extends Error {
  /** A server `ErrorCode`, or `timeout`, `closed`, `disconnected`, `not_connected`. */
  code: ErrorCode | 'timeout' | 'closed' | 'disconnected' | 'not_connected';
  frame: ErrorFrame | null;
  retryAfterMs?: number;
  clientMsgId?: string;
}

export declare class RendezvousClient {
  constructor(options: ClientOptions);
  readonly state: ConnectionState;
  readonly welcome: Welcome | null;
  readonly userId: string | null;
  readonly rooms: Map<string, RoomState>;
  readonly iceServers: RTCIceServer[];
  readonly pendingSends: PendingSend[];
  /** The HTTP(S) base URL of the current node. */
  readonly httpBase: string;
  /** The current socket, if any. */
  readonly ws: WebSocket | null;

  on<K extends keyof ClientEventMap>(type: K, fn: (ev: ClientEventMap[K]) => void): () => void;
  off<K extends keyof ClientEventMap>(type: K, fn: (ev: ClientEventMap[K]) => void): void;
  once<K extends keyof ClientEventMap>(type: K, fn: (ev: ClientEventMap[K]) => void): () => void;
  waitFor<K extends keyof ClientEventMap>(
    type: K,
    filter?: (ev: ClientEventMap[K]) => boolean,
    timeoutMs?: number,
  ): Promise<ClientEventMap[K]>;

  connect(): Promise<Welcome>;
  close(): void;
  reconnectNow(): void;
  room(roomId: string): RoomState | undefined;

  findMatch(criteria: FindMatch): Promise<Searching>;
  cancel(): Promise<MatchCancelled | MatchFound>;
  next(): Promise<Searching>;
  block(userId: string): Promise<Blocked>;
  /** Report a current or recent partner; resolves on `reported`. */
  report(userId: string, roomId: string, reason?: string): Promise<Reported>;
  join(roomId: string): Promise<Joined>;
  leave(roomId: string): Promise<Left>;
  typing(roomId: string, active: boolean): boolean;
  read(roomId: string, seq: number): boolean;
  signal(roomId: string, payload: Record<string, unknown>, to?: string): boolean;
  history(roomId: string, afterSeq?: number, limit?: number): Promise<History>;
  send(roomId: string, text: string, opts?: { clientMsgId?: string; timeoutMs?: number }): Promise<Ack>;
}

export declare function backoffDelay(attempt: number, backoff?: Backoff, random?: () => number): number;
export declare function closePolicy(code: number): {
  reconnect: boolean;
  newToken: boolean;
  nextUrl: boolean;
  immediate: boolean;
  reason: string;
};
export declare function isRetryable(err: { code: string; retry_after_ms?: number }, legacy?: boolean): boolean;
export declare function toRtcIceServer(s: string | { urls?: string | string[]; url?: string; username?: string; credential?: string }): RTCIceServer;
export declare const DEFAULT_BACKOFF: Readonly<Required<Backoff>>;

export type { ChatMessage, Refreshed };

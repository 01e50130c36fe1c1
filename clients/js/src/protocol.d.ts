// The wire protocol (v1) as TypeScript types: what the server sends (`ServerFrame`,
// keyed by `type`) and what a client sends (`ClientFrame`, keyed by `action`).
// PROTOCOL.md is the prose; actors/protocol's JSON Schema is generated from the
// server's Rust types, and test/types.test.mjs checks these types against it.

export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'rate_limited'
  | 'not_in_room'
  | 'too_large'
  | 'already_searching'
  | 'internal'
  | 'token_expired'
  | 'unavailable';

/** An ICE server as the server hands it out (TURN entries carry time-limited credentials). */
export interface IceServerConfig {
  urls: string | string[];
  username?: string;
  credential?: string;
}

export interface RoomDetail {
  room_id: string;
  kind: 'match' | 'public';
  /** Every member, this user included. */
  members: string[];
  /** The room's newest seq (0 before the first message); later messages follow the welcome live. */
  last_seq: number;
}

export interface Welcome {
  type: 'welcome';
  user_id: string;
  session_id: string;
  node: string;
  /** Rooms the user still holds a seat in (a reconnect within the grace period). */
  rooms: string[];
  /** Protocol version (1). Absent on servers from before it was added. */
  protocol?: number;
  /** Per room of `rooms` (same order): kind, members, newest seq. A room too busy to answer has no entry. */
  room_details?: RoomDetail[];
  /** STUN/TURN servers for calls. */
  ice_servers?: IceServerConfig[];
}

export interface Searching {
  type: 'searching';
  ticket: string;
}

export interface MatchFound {
  type: 'match_found';
  room_id: string;
  /** Present for pairs. */
  partner_id?: string;
  members: string[];
  shared_interests: string[];
  score: number;
}

export interface NoMatchFound {
  type: 'no_match_found';
}

export interface MatchCancelled {
  type: 'match_cancelled';
}

export interface Blocked {
  type: 'blocked';
  user_id: string;
}

export interface Ack {
  type: 'ack';
  client_msg_id?: string;
  room_id: string;
  seq: number;
  msg_id: string;
}

export interface ChatMessage {
  type: 'message';
  room_id: string;
  seq: number;
  msg_id: string;
  sender: string;
  text: string;
  /** Milliseconds since the Unix epoch, stamped by the server. */
  ts: number;
}

export interface Typing {
  type: 'typing';
  room_id: string;
  user_id: string;
  active: boolean;
}

export interface Read {
  type: 'read';
  room_id: string;
  user_id: string;
  seq: number;
}

export interface Signal {
  type: 'signal';
  room_id: string;
  from: string;
  payload: Record<string, unknown>;
}

export interface Joined {
  type: 'joined';
  room_id: string;
  members: string[];
}

export interface Left {
  type: 'left';
  room_id: string;
}

export interface Presence {
  type: 'presence';
  room_id: string;
  user_id: string;
  status: 'online' | 'offline' | 'left';
}

export interface RoomClosed {
  type: 'room_closed';
  room_id: string;
  reason?: string;
}

export interface History {
  type: 'history';
  room_id: string;
  messages: ChatMessage[];
  /** The oldest seq the server could still return: `after_seq + 1 … first_seq - 1` are lost for good. */
  first_seq?: number;
  /** The room's newest seq when the page was read: more pages follow while the page ends below it. */
  last_seq?: number;
}

export interface Refreshed {
  type: 'refreshed';
  expires_at?: number;
}

/** The answer to `report`: the report is stored for the operators. */
export interface Reported {
  type: 'reported';
  report_id?: string;
}

export interface ErrorFrame {
  type: 'error';
  code: ErrorCode;
  message: string;
  /** When trying again helps, after how long. */
  retry_after_ms?: number;
  /** The action that failed. */
  action?: string;
  /** The failed frame's `client_msg_id`, when it had one. */
  client_msg_id?: string;
}

export type ServerFrame =
  | Welcome
  | Searching
  | MatchFound
  | NoMatchFound
  | MatchCancelled
  | Blocked
  | Ack
  | ChatMessage
  | Typing
  | Read
  | Signal
  | Joined
  | Left
  | Presence
  | RoomClosed
  | History
  | Refreshed
  | Reported
  | ErrorFrame;

/** Server frames by their `type`. */
export type ServerFrameMap = { [F in ServerFrame as F['type']]: F };

export interface FindMatch {
  /** Interest slugs (required; may be empty). */
  interests: string[];
  language?: string;
  region?: string;
  /** 2–8, default 2. */
  group_size?: number;
  max_wait_ms?: number;
}

export type ClientFrame =
  | ({ action: 'find_match' } & FindMatch)
  | { action: 'cancel_match' }
  | { action: 'next' }
  | { action: 'send'; room_id: string; text: string; client_msg_id?: string }
  | { action: 'typing'; room_id: string; active: boolean }
  | { action: 'read'; room_id: string; seq: number }
  | { action: 'signal'; room_id: string; payload: Record<string, unknown>; to?: string }
  | { action: 'report'; user_id: string; room_id: string; reason?: string }
  | { action: 'block'; user_id: string }
  | { action: 'join'; room_id: string }
  | { action: 'leave'; room_id: string }
  | { action: 'history'; room_id: string; after_seq?: number; limit?: number }
  | { action: 'refresh'; token: string };

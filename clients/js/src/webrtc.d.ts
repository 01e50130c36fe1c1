import type { RendezvousClient } from './index.js';

export interface CallsOptions {
  /** Defaults to the global RTCPeerConnection. */
  RTCPeerConnection?: typeof RTCPeerConnection;
  /** Fixed ICE servers; by default the server's (`welcome` or `/api/client-config`). */
  iceServers?: RTCIceServer[];
  /** Answer offers without asking. Default false. */
  autoAnswer?: boolean;
  /** The local stream for calls answered automatically. */
  getStream?: () => MediaStream | null | Promise<MediaStream | null>;
  /** Relay-only ICE (`iceTransportPolicy: 'relay'`): the peer never learns this user's address. */
  relayOnly?: boolean;
}

export interface IncomingCall {
  room_id: string;
  from: string;
  accept(stream?: MediaStream | null): Promise<Call>;
  decline(): void;
}

export interface CallEventMap {
  track: { track: MediaStreamTrack; streams: readonly MediaStream[] };
  state: RTCPeerConnectionState;
  ended: { by: 'local' | 'remote' };
  warning: unknown;
}

export declare class Call {
  readonly roomId: string;
  readonly peer: string;
  readonly polite: boolean;
  readonly pc: RTCPeerConnection;
  readonly ended: boolean;
  on<K extends keyof CallEventMap>(type: K, fn: (ev: CallEventMap[K]) => void): () => void;
  /** End the call; the peer is told unless `notify` is false. */
  hangup(opts?: { notify?: boolean }): void;
}

export interface CallsEventMap {
  incoming: IncomingCall;
  incoming_ended: { room_id: string; from: string };
  call: Call;
  warning: unknown;
}

export declare class Calls {
  constructor(client: RendezvousClient, options?: CallsOptions);
  readonly calls: Map<string, Call>;
  relayOnly: boolean;
  autoAnswer: boolean;
  on<K extends keyof CallsEventMap>(type: K, fn: (ev: CallsEventMap[K]) => void): () => void;
  iceServers(): Promise<RTCIceServer[]>;
  call(roomId: string, stream: MediaStream | null, to?: string): Promise<Call>;
  dispose(): void;
}

// Compiled (never run) by `tsc -p clients/js`: the guide's example, typed, so the
// .d.ts files are checked against real use.
import { Calls, RendezvousClient, RendezvousError, type ChatMessage, type RecoveryReport } from '@rendezvous/client';

export async function example(): Promise<void> {
  const client = new RendezvousClient({
    urls: ['wss://a.example/ws', 'wss://b.example/ws'],
    getToken: async () => 'jwt',
  });
  client.on('state', (s) => console.log(s.state, s.retryInMs ?? 0));
  client.on('message', (m: ChatMessage) => console.log(m.seq, m.sender, m.text));
  client.on('recovered', (r: RecoveryReport) => console.log(r.room_id, r.recovered ? 'all back' : `${r.lost} lost`));
  const welcome = await client.connect();
  const protocol: number | undefined = welcome.protocol;
  console.log(protocol);

  const found = client.waitFor('match_found', (m) => m.members.length === 2, 30_000);
  await client.findMatch({ interests: ['chess'], language: 'en' });
  const { room_id, partner_id } = await found;
  try {
    const ack = await client.send(room_id, 'hi');
    console.log(ack.seq, ack.msg_id);
  } catch (err) {
    if (err instanceof RendezvousError && err.code === 'timeout') console.log('not delivered');
  }
  client.typing(room_id, true);
  client.read(room_id, 1);

  const calls = new Calls(client, { relayOnly: true });
  calls.on('incoming', async (inc) => {
    const call = await inc.accept(null);
    call.on('track', ({ streams }) => console.log(streams.length));
  });
  const call = await calls.call(room_id, null, partner_id);
  call.hangup();
  // @ts-expect-error: an unknown event name is a type error
  client.on('no_such_event', () => {});
}

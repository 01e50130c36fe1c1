// Rendezvous browser client: the page around the JavaScript SDK (clients/js, served by
// the engine under /sdk/). No framework, no build step. The SDK owns the protocol:
// reconnects (over a node list), catch-up from `history`, resends with the same
// `client_msg_id`, errors routed to the send they name, and the WebRTC call. This file
// only turns its events into the page and the page's buttons into its calls.
//
// Page parameters: `?user=NAME` (anonymous mode) or `?token=JWT`; `?nodes=a:8080,b:8080`
// lists the nodes to use (default: this page's host), each `host:port` or a ws(s) URL.
// `window.rdv` exposes the state for tests: conn, state, me, partner, roomId, messages,
// pc, client, drop().

import { Calls, RendezvousClient } from '/sdk/index.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get('token');
const NAME_RE = /^[A-Za-z0-9_.@:-]{1,64}$/;

const rdv = (window.rdv = {
  conn: 'connecting', // connecting | connected | reconnecting | offline
  state: 'idle', // idle | searching | matched
  me: null,
  partner: null,
  roomId: null,
  messages: [], // current room: {seq, sender, text, ts}, ascending seq, once each (the SDK's promise)
  partnerRead: 0, // highest seq the partner has read
  typing: null, // who is typing, or null
  pc: null, // the RTCPeerConnection of the video call, or null
  client: null,
  drop: () => rdv.client?.ws?.close(4000, 'test drop'), // simulate a network drop
});

let client = null;
let calls = null;
let call = null; // the current Call
let searchedThisSession = false; // the server's `next` needs a find_match in the same session
let lastReadSent = 0;
let reconnectCountdown = null;

// ---------------------------------------------------------------- connection

function nodeUrls() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const list = (params.get('nodes') || location.host).split(',').map((s) => s.trim()).filter(Boolean);
  return list.map((n) => (/^wss?:\/\//.test(n) ? n : `${proto}//${n}/ws`));
}

function connect() {
  if (calls) calls.dispose();
  if (client) client.close();
  const c = new RendezvousClient({
    urls: nodeUrls(),
    ...(token ? { token } : { user: $('name').value }),
    backoff: { initialMs: 1000, maxMs: 10_000 }, // 0.5–1 s, then up to 10 s
  });
  client = rdv.client = c;
  const on = (type, fn) => c.on(type, (ev) => c === client && (fn(ev), render()));
  on('state', onState);
  on('welcome', onWelcome);
  on('searching', () => (rdv.state = 'searching'));
  on('match_found', onMatch);
  on('no_match_found', () => {
    rdv.state = rdv.roomId ? 'matched' : 'idle';
    alertText('Nobody matched in time. Try again, or list fewer or broader interests.');
  });
  on('match_cancelled', () => (rdv.state = rdv.roomId ? 'matched' : 'idle'));
  on('blocked', (f) => note(`You blocked ${f.user_id}. You won't be matched again.`));
  on('message', onMessage);
  on('recovered', (r) => r.room_id === rdv.roomId && !r.recovered
    && note(`${r.lost} earlier message${r.lost === 1 ? ' was' : 's were'} no longer stored and could not be fetched.`));
  on('typing', (f) => here(f) && f.user_id !== rdv.me && showTyping(f.active ? f.user_id : null));
  on('read', (f) => {
    if (here(f) && f.user_id !== rdv.me) rdv.partnerRead = Math.max(rdv.partnerRead, f.seq);
    updateReceipts();
  });
  on('presence', (f) => {
    if (!here(f) || f.user_id === rdv.me) return;
    if (!rdv.partner) rdv.partner = f.user_id;
    if (f.status === 'left') showTyping(null);
    note({ online: `${f.user_id} is back online.`, offline: `${f.user_id} went offline.`, left: `${f.user_id} left the chat.` }[f.status]);
  });
  on('left', (f) => here(f) && (note('You left the chat.'), endRoom()));
  on('room_closed', (f) => here(f) && (note(f.reason === 'blocked' ? 'The chat was closed by a block.' : 'The chat has ended.'), endRoom()));
  on('room_ended', (f) => here(f) && (note('The chat ended while you were offline.'), endRoom()));
  on('retrying', (ev) => alertText(`The server is busy (${ev.code}); your message will be sent again in ${Math.ceil(ev.retryInMs / 1000)} s.`));
  on('error', onError);

  calls = new Calls(c);
  calls.on('incoming', onIncomingCall);
  calls.on('call', adoptCall);
  c.connect().catch(() => {}); // failures show through 'state'
}

function onState(s) {
  clearInterval(reconnectCountdown);
  if (s.state === 'open') return setConn('connected');
  if (s.state === 'connecting' || s.state === 'idle') return setConn(rdv.conn === 'reconnecting' ? 'reconnecting' : 'connecting');
  if (s.state === 'reconnecting') {
    if (rdv.state === 'searching') rdv.state = 'idle';
    showTyping(null);
    let left = Math.max(1, Math.ceil(s.retryInMs / 1000));
    setConn('reconnecting', left);
    reconnectCountdown = setInterval(() => left > 1 && setConn('reconnecting', --left), 1000);
    return undefined;
  }
  // closed
  const why = {
    4009: 'Offline: this name connected from another tab or device.',
    4001: 'Offline: not authorized. Get a new token.',
  }[s.code];
  return setConn('offline', why);
}

function setConn(conn, detail) {
  rdv.conn = conn;
  const text = {
    connecting: 'Connecting…',
    connected: `Connected as ${rdv.me}`,
    reconnecting: `Connection lost. Reconnecting in ${detail} s…`,
    offline: detail || 'Offline',
  }[conn];
  $('status').textContent = text;
  $('status').dataset.conn = conn;
  $('reconnect').hidden = conn === 'connected' || conn === 'connecting';
  render();
}

function onWelcome(f) {
  searchedThisSession = false;
  rdv.me = f.user_id;
  if (token) $('name').value = f.user_id;
  if (!rdv.roomId) {
    const matchRooms = f.rooms.filter((r) => !r.startsWith('pub:'));
    if (matchRooms.length) {
      // A reload within the grace period: the SDK fetches the room's history.
      enterRoom(matchRooms[matchRooms.length - 1], null, []);
      const members = client.room(rdv.roomId)?.members || [];
      rdv.partner = members.find((m) => m !== rdv.me) || null;
      note('Chat resumed.');
    }
  }
  setConn('connected');
}

const here = (f) => f.room_id !== undefined && f.room_id === rdv.roomId;

function onMatch(f) {
  const partner = f.partner_id ?? f.members.filter((m) => m !== rdv.me).join(', ');
  enterRoom(f.room_id, partner, f.shared_interests);
  note(`You're matched with ${partner}. Say hello!`);
  $('message').focus();
}

function onError(f) {
  if (f.client_msg_id) return; // a send's own error: shown on that message (or retried)
  const retry = f.retry_after_ms ? ` Try again in ${Math.ceil(f.retry_after_ms / 1000)} s.` : '';
  alertText(f.message + retry);
  if (f.code === 'already_searching') rdv.state = 'searching';
}

// ---------------------------------------------------------------- rooms and chat

function enterRoom(roomId, partner, shared) {
  endCall(false);
  rdv.roomId = roomId;
  rdv.partner = partner;
  rdv.messages = [];
  rdv.partnerRead = 0;
  rdv.state = 'matched';
  lastReadSent = 0;
  $('log').replaceChildren();
  $('shared').textContent = shared.length ? `You both like: ${shared.join(', ')}` : '';
  showTyping(null);
  alertText('');
}

function endRoom() {
  endCall(false);
  stopTyping();
  rdv.roomId = null;
  if (rdv.state === 'matched') rdv.state = 'idle'; // a search may already run: `left` can follow `searching`
  showTyping(null);
  $('shared').textContent = '';
}

const maxSeq = () => (rdv.messages.length ? rdv.messages[rdv.messages.length - 1].seq : 0);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; // never innerHTML: texts come from strangers
  return e;
}

function messageItem(m, own) {
  const li = el('li', own ? 'msg own' : 'msg other');
  li.append(el('span', 'who', own ? 'You' : m.sender), el('p', 'text', m.text));
  const time = new Date(m.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const meta = el('small', 'meta', time);
  if (own) meta.append(' · ', el('span', 'receipt', 'Sent'));
  li.append(meta);
  return li;
}

// The SDK delivers each message once, in seq order (live, caught up or resent).
function onMessage(m) {
  if (!here(m)) return;
  const own = m.sender === rdv.me;
  if (!own && !rdv.partner) rdv.partner = m.sender; // a resumed room learns its partner
  if (!own && m.sender === rdv.typing) showTyping(null);
  const li = messageItem(m, own);
  li.dataset.seq = m.seq;
  rdv.messages.push({ seq: m.seq, sender: m.sender, text: m.text, ts: m.ts });
  const firstPending = $('log').querySelector('.pending, .failed');
  if (firstPending) firstPending.before(li); // stored messages above those still on their way
  else $('log').append(li);
  updateReceipts();
  scrollDown();
  markRead();
}

function note(text) {
  $('log').append(el('li', 'note', text));
  scrollDown();
}

const scrollDown = () => ($('log').scrollTop = $('log').scrollHeight);

function updateReceipts() {
  for (const li of $('log').querySelectorAll('.own[data-seq]')) {
    const seen = Number(li.dataset.seq) <= rdv.partnerRead;
    li.querySelector('.receipt').textContent = seen ? 'Seen' : 'Sent';
  }
}

// Tell the partner what we have read, but only while the page is actually visible.
function markRead() {
  if (!rdv.roomId || document.visibilityState !== 'visible') return;
  const unread = rdv.messages.some((m) => m.seq > lastReadSent && m.sender !== rdv.me);
  if (unread && client.read(rdv.roomId, maxSeq())) lastReadSent = maxSeq();
}

let typingTimeout = null;
function showTyping(user) {
  rdv.typing = user;
  $('typing').textContent = user ? `${user} is typing…` : '';
  clearTimeout(typingTimeout);
  if (user) typingTimeout = setTimeout(() => showTyping(null), 8000); // a lost "stopped"
}

let typingOn = false;
let typingAt = 0;
let typingIdle = null;
function onInput() {
  if (!rdv.roomId) return;
  if (!$('message').value) return stopTyping();
  // Once when typing starts, again every 4 s while it goes on (the other side forgets after 8 s).
  if (!typingOn || Date.now() - typingAt > 4000) {
    typingOn = client.typing(rdv.roomId, true);
    typingAt = Date.now();
  }
  clearTimeout(typingIdle);
  typingIdle = setTimeout(stopTyping, 2500);
}

function stopTyping() {
  clearTimeout(typingIdle);
  if (typingOn && rdv.roomId) client.typing(rdv.roomId, false);
  typingOn = false;
}

// Shown as "Sending…" until acknowledged; the SDK sends it again after reconnects with
// the same id (stored once), so it is only "Not sent" when the SDK gives up.
function sendMessage(e) {
  e.preventDefault();
  const text = $('message').value.trim();
  if (!text || !rdv.roomId) return;
  stopTyping();
  alertText('');
  const li = messageItem({ sender: rdv.me, text, ts: Date.now() }, true);
  li.classList.add('pending');
  li.querySelector('.receipt').textContent = 'Sending…';
  $('log').append(li);
  $('message').value = '';
  scrollDown();
  client.send(rdv.roomId, text).then(
    () => li.remove(), // the stored message is shown from its `message`
    (err) => {
      li.classList.replace('pending', 'failed');
      li.querySelector('.meta').textContent = `Not sent (${err.code})`;
      if (err.code !== 'timeout') alertText(err.message);
    },
  );
}

// ---------------------------------------------------------------- matching

function search() {
  client.findMatch(readCriteria()).then(() => (searchedThisSession = true), () => {});
}

// The find_match criteria the form describes; the form is remembered for the next visit.
function readCriteria() {
  const interests = $('interests').value.split(',').map((s) => s.trim()).filter(Boolean);
  const language = $('language').value.trim();
  const region = $('region').value.trim();
  const criteria = { interests, group_size: Number($('group').value) };
  if (language) criteria.language = language;
  if (region) criteria.region = region;
  localStorage.setItem('rdv-prefs', JSON.stringify({ interests: $('interests').value, language, region }));
  return criteria;
}

function findMatch(e) {
  e.preventDefault();
  alertText('');
  const name = $('name');
  if (!token && !NAME_RE.test(name.value)) {
    name.setAttribute('aria-invalid', 'true');
    name.focus();
    return alertText('Names use 1 to 64 letters, digits or - _ . @ :');
  }
  name.removeAttribute('aria-invalid');
  if (!token && name.value !== rdv.me) {
    sessionStorage.setItem('rdv-name', name.value);
    connect(); // a new name is a new user: search once it is connected
    client.once('welcome', search);
    return undefined;
  }
  search();
  return undefined;
}

function next() {
  alertText('');
  if (searchedThisSession) return void client.next().catch(() => {});
  if (rdv.roomId) client.leave(rdv.roomId).catch(() => {}); // new session: no search to repeat
  search();
}

// ---------------------------------------------------------------- video call

let acceptAnswer = null; // resolves the "Accept call?" question

function adoptCall(c) {
  call = c;
  rdv.pc = c.pc;
  $('call').hidden = false;
  c.on('track', (ev) => ($('remoteVideo').srcObject = ev.streams[0]));
  c.on('state', (s) => callState(`Call ${s}`));
  c.on('ended', (ev) => {
    if (ev.by === 'remote') note(`${c.peer} ended the video call.`);
    if (call === c) clearCall();
  });
  render();
}

async function localStream() {
  if (!navigator.mediaDevices) throw new Error('the camera needs an https:// page (or localhost)');
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  $('localVideo').srcObject = stream;
  return stream;
}

async function startCall() {
  if (call || !rdv.roomId) return;
  callState('Calling…');
  calls.relayOnly = $('relayOnly').checked;
  try {
    await calls.call(rdv.roomId, await localStream(), rdv.partner || undefined);
  } catch (err) {
    alertText(`Could not start the call: ${err.message}`);
    endCall(true);
  }
}

async function onIncomingCall(inc) {
  if (inc.room_id !== rdv.roomId) return inc.decline();
  if (!$('autoAnswer').checked && !(await askToAccept(inc.from))) return inc.decline();
  callState(`Connecting the call with ${inc.from}…`);
  calls.relayOnly = $('relayOnly').checked;
  try {
    await inc.accept(await localStream());
  } catch (err) {
    alertText(`Could not answer the call: ${err.message}`);
    endCall(true);
  }
  return undefined;
}

function askToAccept(from) {
  $('call').hidden = false;
  $('call').classList.add('ringing');
  $('acceptBtn').hidden = false;
  callState(`${from} is calling you.`);
  $('acceptBtn').focus();
  return new Promise((resolve) => {
    acceptAnswer = (yes) => {
      acceptAnswer = null;
      $('call').classList.remove('ringing');
      $('acceptBtn').hidden = true;
      if (!yes && !call) $('call').hidden = true;
      resolve(yes);
    };
  });
}

function clearCall() {
  const stream = $('localVideo').srcObject;
  if (stream) stream.getTracks().forEach((t) => t.stop());
  call = null;
  rdv.pc = null;
  $('localVideo').srcObject = null;
  $('remoteVideo').srcObject = null;
  $('call').hidden = true;
  render();
}

function endCall(notify) {
  if (acceptAnswer) acceptAnswer(false);
  if (call) call.hangup({ notify });
  clearCall();
}

const callState = (text) => ($('callState').textContent = text);

// ---------------------------------------------------------------- page

const alertText = (text) => ($('alert').textContent = text);

function render() {
  const online = rdv.conn === 'connected';
  const { state } = rdv;
  const inRoom = !!rdv.roomId;
  $('findBtn').disabled = !online || state !== 'idle';
  $('cancelBtn').disabled = !online || state !== 'searching';
  $('nextBtn').disabled = !online || state === 'searching';
  $('leaveBtn').disabled = !online || !inRoom;
  $('blockBtn').disabled = !online || !inRoom || !rdv.partner;
  $('callBtn').disabled = !online || !inRoom || !!rdv.pc;
  $('message').disabled = $('sendBtn').disabled = !inRoom;
  $('name').readOnly = !!token || inRoom || state === 'searching';
  for (const id of ['interests', 'language', 'region']) $(id).readOnly = state === 'searching';
  $('chat-title').textContent = inRoom
    ? `Chatting with ${rdv.partner || 'your match'}`
    : state === 'searching' ? 'Looking for someone…' : 'Not matched yet';
  document.body.dataset.state = state;
}

function init() {
  const prefs = JSON.parse(localStorage.getItem('rdv-prefs') || '{}');
  const guest = `guest-${Math.random().toString(16).slice(2, 6)}`;
  $('name').value = params.get('user') || sessionStorage.getItem('rdv-name') || guest;
  sessionStorage.setItem('rdv-name', $('name').value); // per tab: a reload keeps the seat
  if (token) $('name').value = 'signed in with a token';
  $('interests').value = prefs.interests ?? '';
  $('language').value = prefs.language ?? (navigator.language || 'en').slice(0, 2).toLowerCase();
  $('region').value = prefs.region ?? '';

  $('find').addEventListener('submit', findMatch);
  $('cancelBtn').addEventListener('click', () => client.cancel().catch(() => {}));
  $('nextBtn').addEventListener('click', next);
  $('leaveBtn').addEventListener('click', () => client.leave(rdv.roomId).catch(() => {}));
  $('blockBtn').addEventListener('click', () => {
    if (confirm(`Block ${rdv.partner}? You will not be matched again.`)) client.block(rdv.partner).catch(() => {});
  });
  $('callBtn').addEventListener('click', startCall);
  $('acceptBtn').addEventListener('click', () => acceptAnswer && acceptAnswer(true));
  $('hangupBtn').addEventListener('click', () => (acceptAnswer ? acceptAnswer(false) : endCall(true)));
  $('composer').addEventListener('submit', sendMessage);
  $('message').addEventListener('input', onInput);
  $('message').addEventListener('blur', stopTyping);
  $('reconnect').addEventListener('click', () => client.reconnectNow());
  document.addEventListener('visibilitychange', markRead);
  window.addEventListener('online', () => rdv.conn === 'reconnecting' && client.reconnectNow());
  connect();
}

init();

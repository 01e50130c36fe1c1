// Rendezvous browser client: no framework, no build step; served by the engine at `/`.
//
// What it does, top to bottom:
//  * connection: one WebSocket to `/ws` on this host, as `?user=NAME` (anonymous mode) or
//    with the page's own `?token=JWT`; shows connecting / connected / reconnecting in N s /
//    offline, reconnects after a drop with backoff (1, 2, 4, 8, 10 s ...), and after
//    `welcome` asks `history` for each room it still holds, after the highest seq it saw;
//  * matching: `find_match` with interests, language, region (pairs), `cancel_match`,
//    `next`, `leave`, `block`;
//  * chat: messages kept in seq order, one per seq (live frames and history merge), typing
//    indicator both ways (debounced), read receipts (`read` with the highest seq seen while
//    the page is visible; "Seen" under own messages up to the partner's read seq), presence;
//  * video: WebRTC between the two browsers (no ICE servers; host candidates), the offer,
//    answer and ICE candidates travel as `signal` payloads through the engine, which relays
//    them; media goes peer to peer. Calls are answered automatically unless unticked.
// `window.rdv` exposes the state for tests: conn, state, me, partner, roomId, messages, pc.

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
  messages: [], // current room: {seq, sender, text, ts}, ascending seq, no duplicates
  partnerRead: 0, // highest seq the partner has read
  typing: null, // who is typing, or null
  pc: null, // the RTCPeerConnection of the video call, or null
  ws: null,
  drop: () => rdv.ws && rdv.ws.close(4000, 'test drop'), // simulate a network drop
});

let attempt = 0; // reconnect attempts since the last welcome
let retryTimer = null;
let countdown = null;
let criteria = null; // the last find_match frame, reused by "Next" and after reconnects
let resumeSearch = false; // re-send criteria after the next welcome
let searchedThisSession = false; // the server's `next` needs a find_match in the same session
let lastReadSent = 0;
let msgCounter = 0;
const pending = new Map(); // client_msg_id -> {text, li} until acknowledged

// ---------------------------------------------------------------- connection

function wsUrl() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const who = token ? `token=${encodeURIComponent(token)}` : `user=${encodeURIComponent($('name').value)}`;
  return `${proto}//${location.host}/ws?${who}`;
}

function connect() {
  clearTimeout(retryTimer);
  clearInterval(countdown);
  setConn('connecting');
  const ws = new WebSocket(wsUrl());
  rdv.ws = ws;
  ws.onmessage = (e) => ws === rdv.ws && handle(JSON.parse(e.data));
  ws.onclose = (e) => ws === rdv.ws && dropped(e.code);
}

function reconnectNow() {
  const old = rdv.ws;
  rdv.ws = null; // its close event is ignored
  if (old) old.close(1000);
  connect();
}

function dropped(code) {
  rdv.ws = null;
  for (const p of pending.values()) failed(p.li);
  pending.clear();
  if (rdv.state === 'searching') resumeSearch = true; // a closed socket withdraws the search
  rdv.state = rdv.roomId ? 'matched' : 'idle';
  showTyping(null);
  if (code === 4009) return setConn('offline', 'Offline: this name connected from another tab or device.');
  if (code === 4001) return setConn('offline', 'Offline: not authorized. Get a new token.');
  let left = Math.min(10, 2 ** attempt++);
  setConn('reconnecting', left);
  countdown = setInterval(() => left > 1 && setConn('reconnecting', --left), 1000);
  retryTimer = setTimeout(connect, left * 1000);
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

function send(frame) {
  if (!rdv.ws || rdv.ws.readyState !== WebSocket.OPEN) return false;
  rdv.ws.send(JSON.stringify(frame));
  return true;
}

// ---------------------------------------------------------------- server frames

function handle(f) {
  const here = f.room_id !== undefined && f.room_id === rdv.roomId;
  const from = f.user_id || f.from || f.sender;
  if (here && from && from !== rdv.me && !rdv.partner) rdv.partner = from; // a resumed room
  switch (f.type) {
    case 'welcome': {
      attempt = 0;
      searchedThisSession = false;
      rdv.me = f.user_id;
      if (token) $('name').value = f.user_id;
      const matchRooms = f.rooms.filter((r) => !r.startsWith('pub:'));
      if (rdv.roomId && !f.rooms.includes(rdv.roomId)) {
        note('The chat ended while you were offline.');
        endRoom();
      } else if (!rdv.roomId && matchRooms.length) {
        enterRoom(matchRooms[matchRooms.length - 1], null, []); // a reload within the grace period
        note('Chat resumed.');
      }
      for (const room of f.rooms) {
        const after = room === rdv.roomId ? maxSeq() : 0;
        send({ action: 'history', room_id: room, after_seq: after, limit: 200 });
      }
      setConn('connected');
      if (resumeSearch && criteria && !rdv.roomId) search();
      resumeSearch = false;
      break;
    }
    case 'searching':
      rdv.state = 'searching';
      break;
    case 'match_found': {
      const partner = f.partner_id ?? f.members.filter((m) => m !== rdv.me).join(', ');
      enterRoom(f.room_id, partner, f.shared_interests);
      note(`You're matched with ${partner}. Say hello!`);
      $('message').focus();
      break;
    }
    case 'no_match_found':
      rdv.state = 'idle';
      alertText('Nobody matched in time. Try again, or list fewer or broader interests.');
      break;
    case 'match_cancelled':
      rdv.state = rdv.roomId ? 'matched' : 'idle';
      break;
    case 'blocked':
      note(`You blocked ${f.user_id}. You won't be matched again.`);
      break;
    case 'ack': {
      const p = pending.get(f.client_msg_id);
      pending.delete(f.client_msg_id);
      if (p) p.li.remove();
      if (here && p) addMessage({ seq: f.seq, sender: rdv.me, text: p.text, ts: Date.now() });
      break;
    }
    case 'message':
      if (!here) break;
      if (f.sender === rdv.typing) showTyping(null);
      addMessage(f);
      markRead();
      break;
    case 'history':
      if (!here) break;
      for (const m of f.messages) addMessage(m);
      if (f.messages.length >= 200) send({ action: 'history', room_id: f.room_id, after_seq: maxSeq(), limit: 200 });
      markRead();
      break;
    case 'typing':
      if (here && f.user_id !== rdv.me) showTyping(f.active ? f.user_id : null);
      break;
    case 'read':
      if (here && f.user_id !== rdv.me) rdv.partnerRead = Math.max(rdv.partnerRead, f.seq);
      updateReceipts();
      break;
    case 'presence':
      if (!here || f.user_id === rdv.me) break;
      if (f.status === 'left') showTyping(null);
      note({ online: `${f.user_id} is back online.`, offline: `${f.user_id} went offline.`, left: `${f.user_id} left the chat.` }[f.status]);
      break;
    case 'signal':
      if (here) queueSignal(f.payload, f.from);
      break;
    case 'left':
      if (here) {
        note('You left the chat.');
        endRoom();
      }
      break;
    case 'room_closed':
      if (here) {
        note(f.reason === 'blocked' ? 'The chat was closed by a block.' : 'The chat has ended.');
        endRoom();
      }
      break;
    case 'error':
      onError(f);
      break;
  }
  render();
}

function onError(f) {
  const retry = f.retry_after_ms ? ` Try again in ${Math.ceil(f.retry_after_ms / 1000)} s.` : '';
  alertText(f.message + retry);
  if (f.code === 'already_searching') rdv.state = 'searching';
  if (f.action === 'send') {
    // Error frames carry no client_msg_id: the oldest unacknowledged message is the one.
    const [id, p] = pending.entries().next().value || [];
    if (p) {
      pending.delete(id);
      failed(p.li);
    }
  }
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

// Insert by seq; a seq already shown is ignored (live frame and history overlap).
function addMessage(m) {
  if (rdv.messages.some((x) => x.seq === m.seq)) return;
  const own = m.sender === rdv.me;
  if (!own && !rdv.partner) rdv.partner = m.sender; // a resumed room learns its partner
  for (const li of own ? $('log').querySelectorAll('.failed') : []) {
    if (li.querySelector('.text').textContent === m.text) li.remove(); // stored after all
  }
  const li = messageItem(m, own);
  li.dataset.seq = m.seq;
  const i = rdv.messages.findIndex((x) => x.seq > m.seq);
  const msg = { seq: m.seq, sender: m.sender, text: m.text, ts: m.ts };
  if (i < 0) {
    rdv.messages.push(msg);
    $('log').append(li);
  } else {
    $('log').querySelector(`[data-seq="${rdv.messages[i].seq}"]`).before(li);
    rdv.messages.splice(i, 0, msg);
  }
  updateReceipts();
  scrollDown();
}

function note(text) {
  $('log').append(el('li', 'note', text));
  scrollDown();
}

function failed(li) {
  li.classList.add('failed');
  li.querySelector('.meta').textContent = 'Not sent';
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
  if (unread && send({ action: 'read', room_id: rdv.roomId, seq: maxSeq() })) lastReadSent = maxSeq();
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
    typingOn = send({ action: 'typing', room_id: rdv.roomId, active: true });
    typingAt = Date.now();
  }
  clearTimeout(typingIdle);
  typingIdle = setTimeout(stopTyping, 2500);
}

function stopTyping() {
  clearTimeout(typingIdle);
  if (typingOn && rdv.roomId) send({ action: 'typing', room_id: rdv.roomId, active: false });
  typingOn = false;
}

function sendMessage(e) {
  e.preventDefault();
  const text = $('message').value.trim();
  if (!text || !rdv.roomId) return;
  const id = `c${Date.now().toString(36)}-${++msgCounter}`;
  stopTyping();
  if (!send({ action: 'send', room_id: rdv.roomId, text, client_msg_id: id })) {
    return alertText('Not connected: the message was not sent.');
  }
  alertText('');
  const li = messageItem({ sender: rdv.me, text, ts: Date.now() }, true);
  li.classList.add('pending');
  li.querySelector('.receipt').textContent = 'Sending…';
  $('log').append(li);
  pending.set(id, { text, li });
  $('message').value = '';
  scrollDown();
}

// ---------------------------------------------------------------- matching

function search() {
  searchedThisSession = send(criteria) || searchedThisSession;
}

// The find_match frame the form describes; the form is remembered for the next visit.
function readCriteria() {
  const interests = $('interests').value.split(',').map((s) => s.trim()).filter(Boolean);
  const language = $('language').value.trim();
  const region = $('region').value.trim();
  const frame = { action: 'find_match', interests, group_size: Number($('group').value) };
  if (language) frame.language = language;
  if (region) frame.region = region;
  localStorage.setItem('rdv-prefs', JSON.stringify({ interests: $('interests').value, language, region }));
  return frame;
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
  criteria = readCriteria();
  if (!token && name.value !== rdv.me) {
    sessionStorage.setItem('rdv-name', name.value);
    resumeSearch = true; // search once the new name is connected
    return reconnectNow();
  }
  search();
}

function next() {
  alertText('');
  criteria = criteria || readCriteria(); // e.g. after a reload
  if (searchedThisSession) return send({ action: 'next' });
  if (rdv.roomId) send({ action: 'leave', room_id: rdv.roomId }); // new session: no search to repeat
  search();
}

// ---------------------------------------------------------------- video call

let sigChain = Promise.resolve();
let iceBacklog = [];
let acceptAnswer = null; // resolves the "Accept call?" question

const signal = (payload) => rdv.roomId && send({ action: 'signal', room_id: rdv.roomId, payload });
const polite = () => rdv.me > (rdv.partner || ''); // who yields when both call at once

function queueSignal(payload, from) {
  if (payload.kind === 'hangup' && acceptAnswer) acceptAnswer(false);
  sigChain = sigChain.then(() => onSignal(payload, from)).catch((err) => console.warn('signal', err));
}

function newPc() {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.onicecandidate = (e) => e.candidate && signal({ kind: 'ice', candidate: e.candidate.toJSON() });
  pc.ontrack = (e) => ($('remoteVideo').srcObject = e.streams[0]);
  pc.onconnectionstatechange = () => {
    callState(`Call ${pc.connectionState}`);
    if (pc.connectionState === 'failed' && rdv.pc === pc) endCall(true);
  };
  rdv.pc = pc;
  iceBacklog = [];
  $('call').hidden = false;
  render();
  return pc;
}

async function addMedia(pc) {
  if (!navigator.mediaDevices) throw new Error('the camera needs an https:// page (or localhost)');
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  if (pc !== rdv.pc) {
    stream.getTracks().forEach((t) => t.stop());
    throw new Error('the call ended');
  }
  $('localVideo').srcObject = stream;
  for (const t of stream.getTracks()) pc.addTrack(t, stream);
}

async function flushIce(pc) {
  for (const c of iceBacklog.splice(0)) await pc.addIceCandidate(c).catch(() => {});
}

async function startCall() {
  if (rdv.pc || !rdv.roomId) return;
  const pc = newPc();
  callState('Calling…');
  try {
    await addMedia(pc);
    await pc.setLocalDescription(await pc.createOffer());
    signal({ kind: 'offer', sdp: pc.localDescription.sdp });
  } catch (err) {
    if (rdv.pc !== pc) return;
    alertText(`Could not start the call: ${err.message}`);
    endCall(true);
  }
}

async function onSignal(p, from) {
  if (p.kind === 'hangup') {
    if (rdv.pc) note(`${from} ended the video call.`);
    return endCall(false);
  }
  if (p.kind === 'offer') {
    if (rdv.pc) {
      if (!polite()) return; // both called: the other side yields and answers ours
      endCall(false);
    }
    const room = rdv.roomId;
    if (!$('autoAnswer').checked && !(await askToAccept(from))) {
      return rdv.roomId === room && signal({ kind: 'hangup' }); // declined, not left
    }
    const pc = newPc();
    callState(`Connecting the call with ${from}…`);
    try {
      await pc.setRemoteDescription({ type: 'offer', sdp: p.sdp });
      await addMedia(pc);
      await pc.setLocalDescription(await pc.createAnswer());
      signal({ kind: 'answer', sdp: pc.localDescription.sdp });
      await flushIce(pc);
    } catch (err) {
      if (rdv.pc !== pc) return;
      alertText(`Could not answer the call: ${err.message}`);
      endCall(true);
    }
  } else if (p.kind === 'answer' && rdv.pc && rdv.pc.signalingState === 'have-local-offer') {
    await rdv.pc.setRemoteDescription({ type: 'answer', sdp: p.sdp });
    await flushIce(rdv.pc);
  } else if (p.kind === 'ice' && rdv.pc) {
    if (rdv.pc.remoteDescription) await rdv.pc.addIceCandidate(p.candidate).catch(() => {});
    else iceBacklog.push(p.candidate);
  }
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
      if (!yes && !rdv.pc) $('call').hidden = true;
      resolve(yes);
    };
  });
}

function endCall(notify) {
  if (acceptAnswer) acceptAnswer(false);
  const pc = rdv.pc;
  if (!pc) return;
  if (notify) signal({ kind: 'hangup' });
  for (const s of pc.getSenders()) if (s.track) s.track.stop();
  pc.close();
  rdv.pc = null;
  $('localVideo').srcObject = null;
  $('remoteVideo').srcObject = null;
  $('call').hidden = true;
  render();
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
  $('cancelBtn').addEventListener('click', () => send({ action: 'cancel_match' }));
  $('nextBtn').addEventListener('click', next);
  $('leaveBtn').addEventListener('click', () => send({ action: 'leave', room_id: rdv.roomId }));
  $('blockBtn').addEventListener('click', () => {
    if (confirm(`Block ${rdv.partner}? You will not be matched again.`)) send({ action: 'block', user_id: rdv.partner });
  });
  $('callBtn').addEventListener('click', startCall);
  $('acceptBtn').addEventListener('click', () => acceptAnswer && acceptAnswer(true));
  $('hangupBtn').addEventListener('click', () => (acceptAnswer ? acceptAnswer(false) : endCall(true)));
  $('composer').addEventListener('submit', sendMessage);
  $('message').addEventListener('input', onInput);
  $('message').addEventListener('blur', stopTyping);
  $('reconnect').addEventListener('click', reconnectNow);
  document.addEventListener('visibilitychange', markRead);
  window.addEventListener('online', () => rdv.conn === 'reconnecting' && reconnectNow());
  connect();
}

init();

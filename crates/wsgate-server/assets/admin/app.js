// wsgate's admin page: live figures over server-sent events (/api/events), searches and actions
// over the JSON API. Data is only ever written as text (never as HTML), and every action carries
// the anti-forgery token the server handed out with the state.
'use strict';

const KEEP_REFUSALS = 2000;
const HISTORY = 900;
const $ = (id) => document.getElementById(id);

let state = null;
let csrf = '';
let samples = [];
let refusals = [];
let figures = null;
let search = null; // the refusal filter in force, or null for the live tail
let source = null;

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'on') for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (k === 'data') for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = dv;
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function notice(text, isError) {
  const n = $('notice');
  n.textContent = text;
  n.className = isError ? 'error' : '';
  n.hidden = false;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { n.hidden = true; }, isError ? 9000 : 5000);
}

const fmt = (n) => (n === undefined || n === null) ? '–' : Number(n).toLocaleString('en-US');
const time = (ms) => new Date(ms).toLocaleTimeString('en-GB', { hour12: false });
function ago(secs) {
  if (secs < 60) return secs + ' s';
  if (secs < 3600) return Math.floor(secs / 60) + ' min';
  if (secs < 86400) return (secs / 3600).toFixed(1) + ' h';
  return (secs / 86400).toFixed(1) + ' d';
}

// One colour per reason family, shades within it, so the chart reads at a glance.
const FAMILIES = { auth: 28, origin: 280, firewall: 0, tls: 210, limit: 45, handshake: 200, route: 170, host: 320, authz: 15, upstream: 250, server: 60, cluster: 100 };
function colour(code) {
  const [family, rest = ''] = code.split('.');
  const hue = FAMILIES[family] ?? ((family.length * 47) % 360);
  let h = 0;
  for (const ch of rest) h = (h * 31 + ch.charCodeAt(0)) % 997;
  return `hsl(${hue}, 62%, ${38 + (h % 5) * 7}%)`;
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-wsgate-csrf': csrf },
    body: JSON.stringify(body),
  };
  let r = await fetch(path, init);
  if (r.status === 401) { location.href = '/login'; throw new Error('logged out'); }
  if (r.status === 403 && body !== undefined) {
    // The server restarted and has a new anti-forgery key: read it and try once more.
    const s = await fetch('/api/state');
    if (s.ok) { csrf = (await s.json()).csrf; init.headers['x-wsgate-csrf'] = csrf; r = await fetch(path, init); }
  }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
  return data;
}

function connect() {
  if (source) source.close();
  source = new EventSource('/api/events');
  source.addEventListener('state', (e) => { onState(JSON.parse(e.data)); setLink(true); });
  source.addEventListener('tick', (e) => onTick(JSON.parse(e.data)));
  source.onerror = () => {
    setLink(false);
    if (source.readyState === EventSource.CLOSED) {
      // Refused outright (e.g. a changed token): find out why, then try again.
      fetch('/api/state').then((r) => { if (r.status === 401) location.href = '/login'; }).catch(() => {});
      setTimeout(connect, 3000);
    }
  };
}

function setLink(up) {
  const l = $('link');
  l.textContent = up ? 'live' : 'reconnecting…';
  l.className = 'pill ' + (up ? 'up' : 'down');
}

function onState(s) {
  const restarted = state && state.started_ms !== s.started_ms;
  state = s;
  csrf = s.csrf;
  samples = s.history.slice(-HISTORY);
  refusals = s.refusals.slice();
  figures = s.figures;
  $('about').textContent = `${s.version}${s.node ? ' · node ' + s.node : ''} · ${s.config} · up since ${new Date(s.started_ms).toLocaleString('en-GB')}`;
  $('logout').hidden = !s.token_required;
  fillSelect($('q-code'), 'every code', s.codes.map((c) => [c.code, `${c.code} (${c.status})`]));
  const routes = s.routes.map((r) => [r.path, r.path]);
  fillSelect($('q-route'), 'every route', routes);
  fillSelect($('c-route'), 'every route', routes);
  renderFigures();
  renderChart();
  renderPolicies();
  renderBans(s.bans);
  if (search) runSearch(); else renderRefusals(refusals, false);
  findConnections();
  if (restarted) notice('The server restarted: the page reconnected.');
}

function onTick(t) {
  figures = t.figures;
  for (const x of t.samples) samples.push(x);
  if (samples.length > HISTORY) samples.splice(0, samples.length - HISTORY);
  if (t.refusals.length) {
    refusals = t.refusals.concat(refusals).slice(0, KEEP_REFUSALS);
    const shown = search ? t.refusals.filter((r) => matches(search, r)) : t.refusals;
    prependRefusals(shown);
  }
  renderFigures();
  renderChart();
  renderBans(t.bans);
}

function fillSelect(select, all, options) {
  const keep = select.value;
  select.replaceChildren(el('option', { value: '' }, all), ...options.map(([v, label]) => el('option', { value: v }, label)));
  select.value = keep;
}

// A rate over the last ten seconds of samples (one sample a second).
function rate(pick) {
  const recent = samples.slice(-10);
  if (!recent.length) return 0;
  const per = recent.reduce((a, s) => a + pick(s), 0) / recent.length;
  return per >= 10 ? Math.round(per) : Math.round(per * 10) / 10;
}

function renderFigures() {
  const openChanged = $('f-open').textContent !== fmt(figures.open);
  $('f-open').textContent = fmt(figures.open);
  $('f-admitted').textContent = fmt(rate((s) => s.admitted));
  $('f-refused').textContent = fmt(rate((s) => Object.values(s.refused).reduce((a, b) => a + b, 0)));
  $('f-in').textContent = fmt(rate((s) => s.messages_in));
  $('f-out').textContent = fmt(rate((s) => s.messages_out));
  if (openChanged) findConnections();
  $('f-rooms').textContent = `${fmt(figures.rooms)} · ${fmt(figures.members)}`;
  $('draining').hidden = !figures.draining;
  const c = figures.cluster;
  $('t-cluster').hidden = !c;
  if (c) {
    $('f-cluster').textContent = c.up ? 'connected' : 'Redis down';
    $('f-cluster-detail').textContent = `cluster · ${fmt(c.published)} out · ${fmt(c.received)} in · ${fmt(c.dropped)} dropped`;
  }
  const body = $('routes-open').tBodies[0];
  body.replaceChildren(...state.routes.map((r) => el('tr', {},
    el('td', {}, el('code', {}, r.path)), el('td', {}, r.kind),
    el('td', { class: 'num' }, fmt(figures.by_route[r.path] || 0)))));
  for (const [path, n] of Object.entries(figures.by_route)) {
    if (!state.routes.some((r) => r.path === path)) {
      body.append(el('tr', {}, el('td', {}, el('code', {}, path)), el('td', { class: 'muted' }, 'removed by a reload'), el('td', { class: 'num' }, fmt(n))));
    }
  }
}

function renderChart() {
  const canvas = $('chart');
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 44, bottom = 18, top = 8;
  const now = samples.length ? samples[samples.length - 1].t : Math.floor(Date.now() / 1000);
  const from = now - HISTORY + 1;
  let max = 1;
  const codes = new Set();
  for (const s of samples) {
    const total = s.admitted + Object.values(s.refused).reduce((a, b) => a + b, 0);
    max = Math.max(max, total);
    Object.keys(s.refused).forEach((c) => codes.add(c));
  }
  // Four gridlines with whole-number labels.
  const unit = Math.max(1, Math.pow(10, Math.floor(Math.log10(max / 4))));
  max = Math.ceil(max / (4 * unit)) * 4 * unit;
  const plotW = w - left - 4, plotH = h - top - bottom;
  g.strokeStyle = '#e2e6ec'; g.fillStyle = '#687385'; g.font = '11px system-ui, sans-serif';
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4;
    g.beginPath(); g.moveTo(left, y + 0.5); g.lineTo(w - 4, y + 0.5); g.stroke();
    g.fillText(String(Math.round((max * i) / 4)), 4, y + 4);
  }
  g.fillText('−15 min', left, h - 4);
  g.fillText('−10 min', left + plotW / 3 - 20, h - 4);
  g.fillText('−5 min', left + plotW * 2 / 3 - 18, h - 4);
  g.fillText('now', w - 28, h - 4);
  const bar = plotW / HISTORY;
  for (const s of samples) {
    if (s.t < from) continue;
    const x = left + (s.t - from) * bar;
    let y = top + plotH;
    const draw = (n, c) => {
      if (!n) return;
      const hgt = (n / max) * plotH;
      g.fillStyle = c; g.fillRect(x, y - hgt, Math.max(bar, 1), hgt); y -= hgt;
    };
    draw(s.admitted, '#2f9e62');
    for (const [code, n] of Object.entries(s.refused)) draw(n, colour(code));
  }
  const legend = [el('span', {}, el('i', { data: { c: 'ok' } }), 'admitted')];
  for (const c of [...codes].sort()) legend.push(el('span', {}, el('i', { data: { c } }), c));
  $('legend').replaceChildren(...legend);
  for (const i of $('legend').querySelectorAll('i')) i.style.background = i.dataset.c === 'ok' ? '#2f9e62' : colour(i.dataset.c);
}

function codeBadge(code, status) {
  const b = el('span', { class: 'code' }, `${code} ${status}`);
  b.style.background = colour(code);
  return b;
}

function addrLink(addr) {
  return el('a', { class: 'addr mono', title: 'ban this address…', on: { click: () => { $('ban-address').value = addr; $('ban-address').focus(); } } }, addr);
}

function refusalRow(r, fresh) {
  const hit = search && search.request_id && r.request_id.includes(search.request_id);
  return el('tr', { class: (fresh ? 'fresh ' : '') + (hit ? 'hit' : ''), data: { rid: r.request_id } },
    el('td', { class: 'mono' }, time(r.at_ms)),
    el('td', { class: 'mono' }, r.request_id),
    el('td', {}, addrLink(r.client)),
    el('td', {}, r.route ? el('code', {}, r.route) : el('span', { class: 'muted' }, r.path)),
    el('td', {}, codeBadge(r.code, r.status)),
    el('td', { class: 'detail' }, r.detail));
}

function renderRefusals(list, searched) {
  $('refusals').tBodies[0].replaceChildren(...list.map((r) => refusalRow(r, false)));
  $('refusal-count').textContent = searched
    ? `${list.length} refusal${list.length === 1 ? '' : 's'} match (the server keeps the last 2,000)`
    : (list.length ? `The last ${list.length} refusals, newest first; new ones appear as they happen.` : 'No refusal yet; new ones appear as they happen.');
}

function prependRefusals(list) {
  const body = $('refusals').tBodies[0];
  for (const r of list.slice().reverse()) body.prepend(refusalRow(r, true));
  while (body.rows.length > 500) body.deleteRow(body.rows.length - 1);
  if (!search) $('refusal-count').textContent = `The last ${body.rows.length} refusals, newest first; new ones appear as they happen.`;
}

function matches(f, r) {
  return (!f.code || r.code === f.code) && (!f.route || r.route === f.route)
    && (!f.address || r.client.startsWith(f.address) || r.peer.startsWith(f.address))
    && (!f.request_id || r.request_id.includes(f.request_id));
}

function readSearch() {
  const f = { request_id: $('q-request').value.trim(), code: $('q-code').value, route: $('q-route').value, address: $('q-address').value.trim() };
  return Object.values(f).some((v) => v) ? f : null;
}

async function runSearch() {
  if (!search) { renderRefusals(refusals, false); return; }
  const q = new URLSearchParams(Object.entries(search).filter(([, v]) => v));
  try {
    const found = await api('/api/refusals?' + q);
    renderRefusals(found.refusals, true);
    if (search.request_id) {
      const open = await api('/api/connections?' + new URLSearchParams({ request_id: search.request_id }));
      if (open.connections.length) {
        const c = open.connections[0];
        notice(`Request ${c.conn.request_id} was admitted: open connection ${c.id} on ${c.conn.route} from ${c.conn.client}.`);
        $('c-request').value = search.request_id;
        findConnections();
      } else if (!found.refusals.length) {
        notice(`No refusal or open connection has request id ${search.request_id} (the server keeps the last 2,000 refusals).`, true);
      }
    }
  } catch (e) { notice('Search failed: ' + e.message, true); }
}

async function findConnections() {
  const q = new URLSearchParams(Object.entries({ request_id: $('c-request').value.trim(), address: $('c-address').value.trim(), route: $('c-route').value }).filter(([, v]) => v));
  try {
    const r = await api('/api/connections?' + q);
    $('connections').tBodies[0].replaceChildren(...r.connections.map(({ id, conn }) => el('tr', { data: { id: String(id), rid: conn.request_id } },
      el('td', { class: 'mono' }, id),
      el('td', { class: 'mono' }, time(conn.opened_ms)),
      el('td', { class: 'mono' }, conn.request_id),
      el('td', {}, addrLink(conn.client)),
      el('td', {}, el('code', {}, conn.route)),
      el('td', {}, conn.identity || el('span', { class: 'muted' }, 'anonymous')),
      el('td', {}, el('button', { type: 'button', class: 'small danger', on: { click: () => closeConnection(id) } }, 'Close')))));
    $('conn-count').textContent = r.matched > r.connections.length
      ? `${fmt(r.matched)} match; the newest ${r.connections.length} are shown.`
      : `${fmt(r.matched)} open connection${r.matched === 1 ? '' : 's'} match.`;
  } catch (e) { notice('Listing connections failed: ' + e.message, true); }
}

async function closeConnection(id) {
  try {
    await api('/api/close', { id });
    notice(`Connection ${id} closed (1008, closed by an operator).`);
  } catch (e) { notice(`Closing ${id} failed: ${e.message}`, true); }
  setTimeout(findConnections, 300);
}

function renderBans(list) {
  $('bans').tBodies[0].replaceChildren(...(list.length ? list.map((b) => el('tr', {},
    el('td', {}, el('code', {}, b.address)),
    el('td', {}, ago(b.seconds_left)),
    el('td', {}, b.by),
    el('td', {}, el('button', { type: 'button', class: 'small', on: { click: () => lift(b.address) } }, 'Lift'))))
    : [el('tr', {}, el('td', { colSpan: 4, class: 'muted' }, 'No address is banned.'))]));
}

async function lift(address) {
  try {
    await api('/api/unban', { address });
    notice(`The ban on ${address} is lifted.`);
  } catch (e) { notice('Lifting failed: ' + e.message, true); }
}

function renderPolicies() {
  $('policies').replaceChildren(...state.routes.map((r) => el('div', { class: 'policy' },
    el('h3', {}, el('code', {}, r.path), ` → ${r.kind}`, r.upstream ? ` ${r.upstream}` : '',
      r.subprotocols.length ? el('span', { class: 'muted' }, ` · subprotocols ${r.subprotocols.join(', ')}`) : ''),
    ...r.policies.map((p) => el('div', {},
      r.policies.length > 1 ? el('p', { class: 'muted small' }, 'on ' + p.listener) : null,
      el('table', {}, el('tbody', {}, ...p.gates.map(([gate, text]) => el('tr', {}, el('td', {}, gate), el('td', {}, text))))))))));
}

function wire() {
  $('refusal-filter').addEventListener('submit', (e) => { e.preventDefault(); search = readSearch(); runSearch(); });
  $('q-clear').addEventListener('click', () => {
    for (const id of ['q-request', 'q-code', 'q-route', 'q-address']) $(id).value = '';
    search = null; renderRefusals(refusals, false);
  });
  $('conn-filter').addEventListener('submit', (e) => { e.preventDefault(); findConnections(); });
  $('ban-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const address = $('ban-address').value.trim();
    const seconds = Number($('ban-seconds').value);
    try {
      const r = await api('/api/ban', { address, seconds, close_connections: $('ban-close').checked });
      notice(`${r.banned} is banned for ${ago(r.seconds)}${r.closed ? `; ${r.closed} connection(s) closed` : ''}.`);
      $('ban-address').value = '';
      setTimeout(findConnections, 300);
    } catch (err) { notice('Ban failed: ' + err.message, true); }
  });
  $('reload').addEventListener('click', async () => {
    try {
      const r = await api('/api/reload', {});
      notice('Configuration reloaded: ' + r.changes);
    } catch (e) { notice('Reload failed, the previous configuration stays: ' + e.message, true); }
    const s = await api('/api/state').catch(() => null);
    if (s) onState(s);
  });
  window.addEventListener('resize', () => { if (state) renderChart(); });
  setInterval(() => { if (state && document.visibilityState === 'visible') findConnections(); }, 5000);
}

wire();
connect();

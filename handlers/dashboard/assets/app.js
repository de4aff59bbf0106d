// hookstream dashboard: plain JavaScript over the /v1 API, authenticated by
// the session cookie (HttpOnly: this script never sees it). Every write
// sends the session's CSRF token, read from GET /v1/auth/session. Every
// value from the API is put in the page as text, never as HTML.
'use strict';

let csrf = '';
// Each render is a generation; what a page opens (a live tail, a poll) is
// closed when the next render starts, or at once if it is already stale
// (a slow page finishing after the user moved on).
let gen = 0;
let cleanups = [];
function onLeave(pageGen, fn) {
  if (pageGen !== gen) fn(); else cleanups.push(fn);
}

class APIError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const opts = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (method !== 'GET') {
    opts.headers['Content-Type'] = 'application/json';
    opts.headers['X-CSRF-Token'] = csrf;
    opts.body = body === undefined ? '{}' : JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401 && path !== '/v1/auth/login') {
    csrf = '';
    showChrome(false);
    location.hash = '#/login';
    throw new APIError(401, 'Your session has ended: log in again.');
  }
  if (!r.ok) throw new APIError(r.status, (data && data.error) || r.statusText);
  return data;
}

// h builds an element: h('a', {href: '#/x', class: 'y'}, 'text', child…).
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

const svgNS = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const kid of kids) el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return el;
}

const main = () => document.getElementById('main');

function flash(msg, isError) {
  const box = document.getElementById('flash');
  box.replaceChildren(h('div', { class: isError ? 'error' : '' }, msg));
  clearTimeout(flash.t);
  if (!isError) flash.t = setTimeout(() => box.replaceChildren(), 4000); // an error stays until the next message
}

function fmtTime(v) {
  if (!v) return '–';
  const d = new Date(v);
  return isNaN(d) ? String(v) : d.toLocaleString();
}
function fmtBytes(n) {
  if (n === null || n === undefined) return '–';
  return n < 1024 ? n + ' B' : n < 1048576 ? (n / 1024).toFixed(1) + ' KB' : (n / 1048576).toFixed(1) + ' MB';
}
function badge(v) { return h('span', { class: 'badge ' + String(v || '') }, v === null || v === undefined ? '–' : String(v)); }
function link(href, text) { return h('a', { href }, text); }
function pretty(v) {
  if (v === null || v === undefined) return '';
  if (typeof v === 'string') {
    try { return JSON.stringify(JSON.parse(v), null, 2); } catch (_) { return v; }
  }
  return JSON.stringify(v, null, 2);
}
function copyButton(text, label) {
  return h('button', {
    type: 'button', 'aria-label': label || 'Copy',
    onclick: async (e) => {
      try { await navigator.clipboard.writeText(text); flash('Copied.'); } catch (_) {
        const ta = h('textarea', { 'aria-hidden': 'true' }); ta.value = text; document.body.append(ta); ta.select();
        document.execCommand('copy'); ta.remove(); flash('Copied.');
      }
      e.target.blur();
    },
  }, 'Copy');
}
// busy runs an action from a button: disabled while it runs, errors flashed.
function busy(fn) {
  return async (e) => {
    const b = e && e.currentTarget;
    if (b) b.disabled = true;
    try { await fn(e); } catch (err) { flash(err.message, true); } finally { if (b) b.disabled = false; }
  };
}
function table(heads, rows, empty) {
  if (!rows.length) return h('p', { class: 'muted' }, empty || 'Nothing here yet.');
  return h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {}, heads.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, rows)));
}
// show is a field's value as text: header lists joined, objects as JSON.
function show(v) {
  if (v === null || v === undefined) return 'null';
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v.join(', ');
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}
function fields(obj, keys) {
  return h('dl', { class: 'fields' }, (keys || Object.keys(obj)).map((k) => [h('dt', {}, k),
    h('dd', { class: typeof obj[k] === 'string' && /^[0-9a-f]{32}$/.test(obj[k]) ? 'mono' : '' },
      show(obj[k]))]));
}
function notFound(what) {
  return h('div', { class: 'notfound card' }, h('h1', {}, 'Not found'),
    h('p', {}, `No ${what} with this id in this environment.`), link('#/', 'Back to the overview'));
}
function hashQuery() {
  const i = location.hash.indexOf('?');
  return new URLSearchParams(i < 0 ? '' : location.hash.slice(i + 1));
}
function setHashQuery(base, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const qs = q.toString();
  location.hash = base + (qs ? '?' + qs : '');
}
function isoFromLocal(v) { return v ? new Date(v).toISOString() : ''; }
function localFromISO(v) {
  if (!v) return '';
  const d = new Date(v);
  if (isNaN(d)) return '';
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

// ---- chrome, session, routing ----

function showChrome(on) { document.getElementById('top').hidden = !on; }

async function loadSession() {
  const me = await api('GET', '/v1/auth/session');
  csrf = me.csrf_token || '';
  document.getElementById('who').textContent = 'environment ' + me.env_id;
  showChrome(true);
  return me;
}

const routes = [
  [/^#\/login/, pageLogin, true],
  [/^#\/events\/([0-9a-f]{32})(?:\?.*)?$/, pageEvent],
  [/^#\/events/, pageEvents],
  [/^#\/attempts\/([^/?]+)$/, pageAttempt],
  [/^#\/dlq/, pageDLQ],
  [/^#\/issues/, pageIssues],
  [/^#\/replay/, pageReplay],
  [/^#\/sources/, pageSources],
  [/^#\/destinations/, pageDestinations],
  [/^#\/connections/, pageConnections],
  [/^#\/?$|^$/, pageOverview],
];

async function render() {
  for (const fn of cleanups) fn();
  cleanups = [];
  const mine = ++gen;
  const hash = location.hash || '#/';
  for (const a of document.querySelectorAll('header nav a')) {
    const href = a.getAttribute('href');
    a.classList.toggle('active', href === '#/' ? hash === '#/' : hash.startsWith(href));
    if (a.classList.contains('active')) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  for (const [re, page, isPublic] of routes) {
    const m = hash.match(re);
    if (!m) continue;
    try {
      if (!isPublic && !csrf) await loadSession();
      const node = await page(...m.slice(1));
      if (mine !== gen) return; // the user moved on meanwhile
      main().replaceChildren(node);
      main().dataset.page = page.name.replace(/^page/, '').toLowerCase();
      main().focus({ preventScroll: true });
    } catch (err) {
      if (err.status === 401 || mine !== gen) return; // on the way to the login page, or moved on
      if (err.status === 404) { main().replaceChildren(notFound('item')); main().dataset.page = 'notfound'; return; }
      main().replaceChildren(h('div', { class: 'card' }, h('h1', {}, 'Something went wrong'), h('p', {}, err.message)));
    }
    return;
  }
  main().replaceChildren(h('div', { class: 'notfound card' }, h('h1', {}, 'Not found'), h('p', {}, 'No such page.'), link('#/', 'Overview')));
}

// ---- login ----

async function pageLogin() {
  showChrome(false);
  const linkToken = hashQuery().get('link');
  if (linkToken) {
    // Redeemed only when the user says so: a link someone else sent cannot
    // log this browser into their environment unnoticed.
    history.replaceState(null, '', '#/login'); // the link's token leaves the address bar and the history
    return h('div', { class: 'login card' }, h('h1', {}, 'Log in to hookstream'),
      h('p', {}, 'This one-time link opens a session of the environment it was made for.'),
      h('button', {
        type: 'button', class: 'primary', id: 'use-link',
        onclick: busy(async () => {
          csrf = (await api('POST', '/v1/auth/login', { link_token: linkToken })).session.csrf_token;
          await loadSession();
          location.hash = '#/';
        }),
      }, 'Log in with this link'), ' ', link('#/login', 'Use an API key instead'));
  }
  const key = h('input', { id: 'api-key', name: 'api_key', type: 'password', autocomplete: 'off', required: true, placeholder: 'hs_live_…' });
  const form = h('form', {
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        csrf = (await api('POST', '/v1/auth/login', { api_key: key.value.trim() })).session.csrf_token;
        await loadSession();
        location.hash = '#/';
      } catch (err) { flash(err.message, true); }
    },
  }, h('label', { for: 'api-key' }, 'API key', key), h('button', { class: 'primary', type: 'submit' }, 'Log in'));
  return h('div', { class: 'login card' }, h('h1', {}, 'Log in to hookstream'),
    h('p', { class: 'muted' }, 'Use an API key (hookstream serve prints the first one; hookstream keys create makes more), or open a link from hookstream login-link.'),
    form);
}

async function logout() {
  try { await api('POST', '/v1/auth/logout'); } catch (_) { /* already gone */ }
  csrf = '';
  showChrome(false);
  location.hash = '#/login';
}

// ---- overview ----

function chart(label, labels, series, kind) {
  const W = 600, H = 180, L = 40, B = 20, T = 8;
  const n = labels.length || 1;
  let max = 0;
  if (kind === 'stack') for (let i = 0; i < n; i++) max = Math.max(max, series.reduce((a, x) => a + (x.values[i] || 0), 0));
  else for (const x of series) for (const v of x.values) max = Math.max(max, v || 0);
  max = max || 1;
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const bw = (W - L) / n;
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label, preserveAspectRatio: 'none' });
  svg.append(s('title', {}, label));
  svg.append(s('line', { class: 'axis', x1: L, y1: H - B, x2: W, y2: H - B }));
  svg.append(s('text', { x: 2, y: T + 8 }, String(Math.round(max))));
  svg.append(s('text', { x: 2, y: H - B }, '0'));
  if (labels.length) {
    svg.append(s('text', { x: L, y: H - 4 }, labels[0]));
    svg.append(s('text', { x: W - 110, y: H - 4 }, labels[labels.length - 1]));
  }
  if (kind === 'line') {
    for (const x of series) {
      const pts = x.values.map((v, i) => v === null ? null : `${L + bw * i + bw / 2},${y(v)}`).filter(Boolean);
      if (pts.length) svg.append(s('polyline', { points: pts.join(' '), fill: 'none', 'stroke-width': 2, class: 'l-' + x.key }));
      x.values.forEach((v, i) => {
        if (v !== null) svg.append(s('circle', { cx: L + bw * i + bw / 2, cy: y(v), r: 3, class: 's-' + x.key }, s('title', {}, `${labels[i]}: ${x.name} ${v} ms`)));
      });
    }
  } else {
    for (let i = 0; i < n; i++) {
      let base = 0;
      for (const x of series) {
        const v = x.values[i] || 0;
        if (!v) continue;
        const top = kind === 'stack' ? base + v : v;
        svg.append(s('rect', { x: L + bw * i + 1, y: y(top), width: Math.max(1, bw - 2), height: y(base) - y(top), class: 's-' + x.key },
          s('title', {}, `${labels[i]}: ${x.name} ${v}`)));
        if (kind === 'stack') base = top;
      }
    }
  }
  const legend = h('div', { class: 'legend' }, series.map((x) => h('span', {}, h('i', { class: 'k-' + x.key }), x.name)));
  return h('div', {}, svg, legend);
}

function buckets(points) {
  const keys = [...new Set(points.map((p) => p.bucket))].sort();
  return { keys, labels: keys.map((k) => new Date(k).toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit' })) };
}

async function pageOverview() {
  const q = hashQuery();
  const win = q.get('window') || '24h';
  const spans = { '24h': [24 * 3600e3, 'hour'], '7d': [7 * 24 * 3600e3, 'hour'], '30d': [30 * 24 * 3600e3, 'day'] };
  const [span, gran] = spans[win] || spans['24h'];
  const now = Date.now();
  const w = `after=${encodeURIComponent(new Date(now - span).toISOString())}&before=${encodeURIComponent(new Date(now).toISOString())}&granularity=${gran}`;
  const dest = q.get('destination_id') || '';
  const [ov, vol, del, lat, dests] = await Promise.all([
    api('GET', '/v1/metrics/overview'), api('GET', '/v1/metrics/volume?' + w), api('GET', '/v1/metrics/deliveries?' + w),
    api('GET', '/v1/metrics/latency?' + w + (dest ? '&destination_id=' + encodeURIComponent(dest) : '')), api('GET', '/v1/destinations?limit=100'),
  ]);
  const o = ov.overview;
  const stats = [['Events today', o.events_today], ['Events this week', o.events_this_week], ['Deliveries today', o.deliveries_today],
    ['Succeeded today', o.success_today], ['Failed today', o.failed_today], ['Success rate', o.success_rate_today === null ? '–' : o.success_rate_today + ' %'],
    ['Dead letters', o.dlq_count], ['Open issues', o.open_issues], ['Active sources', o.active_sources], ['Active destinations', o.active_destinations]];
  const vb = buckets(vol.series);
  const volValues = vb.keys.map((k) => vol.series.filter((p) => p.bucket === k).reduce((a, p) => a + p.event_count, 0));
  const db = buckets(del.series);
  const sum = (k, f) => del.series.filter((p) => p.bucket === k).reduce((a, p) => a + p[f], 0);
  const lb = buckets(lat.series);
  const latOf = (k, f) => {
    const ps = lat.series.filter((p) => p.bucket === k && (!dest || p.destination_id === dest));
    return ps.length ? Math.max(...ps.map((p) => p[f] || 0)) : null;
  };
  const winSel = h('select', { id: 'window', onchange: (e) => setHashQuery('#/', { window: e.target.value, destination_id: dest }) },
    Object.keys(spans).map((k) => h('option', { value: k, selected: k === win }, 'Last ' + k)));
  const destSel = h('select', { id: 'latency-destination', onchange: (e) => setHashQuery('#/', { window: win, destination_id: e.target.value }) },
    h('option', { value: '' }, 'All destinations (slowest)'),
    dests.destinations.map((d) => h('option', { value: d.id, selected: d.id === dest }, d.name)));
  return h('div', {},
    h('h1', {}, 'Overview'),
    h('div', { class: 'grid', id: 'stats' }, stats.map(([k, v]) => h('div', { class: 'stat' }, h('b', {}, v), h('span', {}, k)))),
    h('div', { class: 'toolbar' }, h('label', { for: 'window' }, 'Window', winSel)),
    h('div', { class: 'cols' },
      h('div', { class: 'card' }, h('h2', {}, 'Volume'), chart('Events received per ' + gran, vb.labels, [{ key: 'events', name: 'events', values: volValues }], 'bar')),
      h('div', { class: 'card' }, h('h2', {}, 'Deliveries'), chart('Deliveries per ' + gran, db.labels, [
        { key: 'success', name: 'success', values: db.keys.map((k) => sum(k, 'success_count')) },
        { key: 'failed', name: 'failed', values: db.keys.map((k) => sum(k, 'failure_count') - sum(k, 'dlq_count')) },
        { key: 'dlq', name: 'dead-lettered', values: db.keys.map((k) => sum(k, 'dlq_count')) }], 'stack'))),
    h('div', { class: 'card' }, h('h2', {}, 'Latency (ms)'), h('div', { class: 'toolbar' }, h('label', { for: 'latency-destination' }, 'Destination', destSel)),
      chart('Delivery latency p50, p95, p99 in ms', lb.labels, ['p50', 'p95', 'p99'].map((p) => ({ key: p, name: p, values: lb.keys.map((k) => latOf(k, p + '_ms')) })), 'line')));
}

// ---- events ----

async function sourceOptions(selected) {
  const res = await api('GET', '/v1/sources?limit=100');
  return [h('option', { value: '' }, 'All sources'), ...res.sources.map((x) => h('option', { value: x.id, selected: x.id === selected }, x.name))];
}

function eventRow(e, fresh) {
  return h('tr', { class: fresh ? 'new' : '' },
    h('td', { class: 'id' }, link('#/events/' + e.id + (fresh ? '?fresh=1' : ''), e.id)), h('td', {}, e.source_name || e.source_id), h('td', {}, e.method),
    h('td', {}, e.status ? badge(e.status) : badge('received')), h('td', {}, fmtBytes(e.payload_size ?? e.body_size)), h('td', {}, fmtTime(e.received_at)));
}

async function pageEvents() {
  const pageGen = gen;
  const q = hashQuery();
  const params = new URLSearchParams({ limit: '25' });
  for (const k of ['source_id', 'status', 'after', 'before', 'search', 'cursor', 'direction']) if (q.get(k)) params.set(k, q.get(k));
  const res = await api('GET', '/v1/events?' + params);
  const src = h('select', { id: 'f-source', name: 'source_id' }, await sourceOptions(q.get('source_id')));
  const st = h('select', { id: 'f-status', name: 'status' }, ['', 'received', 'processing', 'delivered', 'failed'].map((v) =>
    h('option', { value: v, selected: v === (q.get('status') || '') }, v || 'Any status')));
  const after = h('input', { id: 'f-after', type: 'datetime-local', value: localFromISO(q.get('after')) });
  const before = h('input', { id: 'f-before', type: 'datetime-local', value: localFromISO(q.get('before')) });
  const search = h('input', { id: 'f-search', type: 'search', placeholder: 'id prefix or body text', value: q.get('search') || '' });
  const filters = h('form', {
    class: 'inline', 'aria-label': 'Filters',
    onsubmit: (e) => {
      e.preventDefault();
      setHashQuery('#/events', { source_id: src.value, status: st.value, after: isoFromLocal(after.value), before: isoFromLocal(before.value), search: search.value.trim() });
    },
  }, h('label', { for: 'f-source' }, 'Source', src), h('label', { for: 'f-status' }, 'Status', st), h('label', { for: 'f-after' }, 'After', after),
  h('label', { for: 'f-before' }, 'Before', before), h('label', { for: 'f-search' }, 'Search', search), h('button', { type: 'submit' }, 'Apply'),
  h('a', { class: 'button', href: '#/events' }, 'Clear'));
  const pg = res.pagination;
  const base = Object.fromEntries([...q.entries()].filter(([k]) => k !== 'cursor' && k !== 'direction'));
  const pager = h('div', { class: 'toolbar' },
    pg.prev_cursor ? h('button', { type: 'button', onclick: () => setHashQuery('#/events', { ...base, cursor: pg.prev_cursor, direction: 'prev' }) }, '← Newer') : null,
    pg.next_cursor ? h('button', { type: 'button', onclick: () => setHashQuery('#/events', { ...base, cursor: pg.next_cursor, direction: 'next' }) }, 'Older →') : null,
    h('span', { class: 'muted' }, pg.total === null || pg.total === undefined ? '' : pg.total + ' events'));

  // Live tail: new webhooks of this environment, as the log commits them.
  const dot = h('span', { class: 'live-dot', 'aria-hidden': 'true' });
  const state = h('span', { id: 'live-state' }, 'connecting…');
  const liveBody = h('tbody', { id: 'live-rows' });
  const es = new EventSource('/v1/events/tail');
  es.onopen = () => { dot.classList.add('on'); state.textContent = 'live'; };
  es.onerror = () => {
    dot.classList.remove('on');
    // CLOSED: refused (too many tails open, or the session ended); the browser will not retry.
    state.textContent = es.readyState === EventSource.CLOSED ? 'stopped: reload the page to try again' : 'reconnecting…';
  };
  es.addEventListener('event', (m) => {
    const e = JSON.parse(m.data);
    liveBody.prepend(eventRow(e, true));
    while (liveBody.children.length > 50) liveBody.lastChild.remove();
  });
  onLeave(pageGen, () => es.close());
  const live = h('section', { class: 'card', 'aria-labelledby': 'live-h' },
    h('h2', { id: 'live-h' }, dot, 'Live tail ', h('span', { class: 'muted' }, '(', state, ')')),
    h('div', { class: 'scroll' }, h('table', { id: 'live' }, h('thead', {}, h('tr', {}, ['Event', 'Source', 'Method', 'Status', 'Size', 'Received'].map((x) => h('th', { scope: 'col' }, x)))), liveBody)));

  return h('div', {}, h('h1', {}, 'Events'), live, filters,
    table(['Event', 'Source', 'Method', 'Status', 'Size', 'Received'], res.events.map((e) => eventRow(e)), 'No events match.'), pager);
}

async function pageEvent(id) {
  // An event opened from the live tail is in the log, and may not be in the
  // events list yet (the projector runs a moment behind): wait for it a little.
  const fresh = hashQuery().get('fresh') === '1';
  let res;
  for (let i = 0; ; i++) {
    try { res = await api('GET', '/v1/events/' + id); break; } catch (err) {
      if (err.status !== 404) throw err;
      if (!fresh || i >= 40) return notFound('event');
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  const e = res.event;
  const attempts = (await api('GET', '/v1/delivery-attempts?limit=100&event_id=' + id)).delivery_attempts;
  const byDelivery = new Map();
  for (const a of attempts.slice().reverse()) {
    if (!byDelivery.has(a.delivery_id)) byDelivery.set(a.delivery_id, []);
    byDelivery.get(a.delivery_id).push(a);
  }
  const payloadText = e.payload_expired_at ? '' : pretty(e.payload);
  const deliveries = [...byDelivery.entries()].map(([d, list]) => h('div', { class: 'card delivery' },
    h('h2', {}, list[0].destination_name || list[0].destination_id, h('span', { class: 'muted' }, ' via ' + (list[0].connection_name || list[0].connection_id))),
    h('ol', { class: 'timeline' }, list.map((a) => h('li', { class: a.is_dlq ? 'dlq' : a.status },
      link('#/attempts/' + a.id, `Attempt #${a.attempt_number}`), ' ', badge(a.status), a.is_dlq ? [' ', badge('dlq')] : null,
      ` ${a.trigger_type}`, a.response_status ? ` · HTTP ${a.response_status}` : a.error ? ` · ${a.error}` : '',
      h('div', { class: 'when' }, fmtTime(a.created_at), a.duration_ms !== null ? ` · ${a.duration_ms} ms` : '')))),
  ));
  return h('div', {},
    h('h1', {}, 'Event ', h('span', { class: 'mono' }, e.id)),
    h('div', { class: 'actions' }, h('button', {
      type: 'button', id: 'retry-event',
      onclick: busy(async () => {
        const r = await api('POST', `/v1/events/${id}/retry`);
        flash(r.message || `Retried ${r.retried.length} deliveries.`);
        render();
      }),
    }, 'Retry failed deliveries')),
    h('div', { class: 'cols' },
      h('div', { class: 'card' }, h('h2', {}, 'Details'), fields(e, ['status', 'source_name', 'source_id', 'method', 'content_type', 'payload_size',
        'received_at', 'source_ip', 'verification_status', 'dedup_status', 'payload_expired_at'])),
      h('div', { class: 'card' }, h('h2', {}, 'Headers'), fields(e.headers || {}))),
    h('div', { class: 'card' }, h('h2', {}, 'Payload ', payloadText ? copyButton(payloadText, 'Copy the payload') : null),
      e.payload_expired_at ? h('p', { class: 'muted' }, `Expired at ${fmtTime(e.payload_expired_at)} (retention); sha256 ${e.body_sha256 || '–'}`) : h('pre', { id: 'payload' }, payloadText)),
    e.skipped_connections && e.skipped_connections.length ? h('div', { class: 'card' }, h('h2', {}, 'Skipped connections'),
      table(['Connection', 'Destination', 'Reason'], e.skipped_connections.map((x) => h('tr', {}, h('td', { class: 'id' }, x.connection_id), h('td', { class: 'id' }, x.destination_id), h('td', {}, x.reason))))) : null,
    h('h2', {}, 'Deliveries'), byDelivery.size ? deliveries : h('p', { class: 'muted' }, 'No delivery yet.'));
}

// ---- a delivery attempt ----

function headersBlock(obj) {
  if (!obj) return h('p', { class: 'muted' }, 'none');
  let o = obj;
  if (typeof o === 'string') { try { o = JSON.parse(o); } catch (_) { return h('pre', {}, o); } }
  return fields(o);
}

async function pageAttempt(id) {
  let a;
  try { a = (await api('GET', '/v1/delivery-attempts/' + encodeURIComponent(id))).delivery_attempt; } catch (err) {
    if (err.status === 404) return notFound('delivery attempt');
    throw err;
  }
  const hist = (await api('GET', `/v1/delivery-attempts/${encodeURIComponent(id)}/history`)).history;
  const outcome = h('div', { id: 'retry-outcome', role: 'status' });
  const retry = h('button', {
    type: 'button', class: 'primary', id: 'retry',
    onclick: busy(async () => {
      outcome.replaceChildren(h('span', { class: 'muted' }, 'Retrying… (waiting for the destination)'));
      const n = (await api('POST', `/v1/delivery-attempts/${encodeURIComponent(id)}/retry`)).delivery_attempt;
      outcome.replaceChildren(h('p', {}, `New attempt #${n.attempt_number}: `, badge(n.status),
        n.response_status ? ` HTTP ${n.response_status}` : n.error ? ` ${n.error}` : '', ' · ', link('#/attempts/' + n.id, 'open it')));
    }),
  }, 'Retry');
  return h('div', {},
    h('h1', {}, `Attempt #${a.attempt_number} `, badge(a.status), a.is_dlq ? [' ', badge('dlq')] : null),
    h('p', {}, 'Event ', link('#/events/' + a.event_id, a.event_id), ' → ', a.destination_name || a.destination_id),
    h('div', { class: 'actions' }, retry), outcome,
    h('div', { class: 'cols' },
      h('section', { class: 'card', 'aria-label': 'Request' }, h('h2', {}, 'Request'),
        h('p', { class: 'mono' }, `${a.request_method} ${a.request_url}`), h('p', { class: 'muted' }, `body ${fmtBytes(a.request_body_size)}`),
        headersBlock(a.request_headers)),
      h('section', { class: 'card', 'aria-label': 'Response' }, h('h2', {}, 'Response'),
        h('p', {}, a.response_status ? `HTTP ${a.response_status}` : (a.error || 'no response'), a.duration_ms !== null ? ` in ${a.duration_ms} ms` : ''),
        headersBlock(a.response_headers), h('pre', { id: 'response-body' }, a.response_body || ''))),
    h('div', { class: 'card' }, h('h2', {}, 'All fields'), fields(a)),
    h('div', { class: 'card' }, h('h2', {}, 'History'),
      h('ol', { class: 'timeline', id: 'history' }, hist.events.map((ev) => h('li', { class: /Attempted/.test(ev.type) && /success/.test(ev.summary) ? 'success' : /DLQ|failed/.test(ev.type + ev.summary) ? 'failed' : '' },
        h('b', {}, ev.type), ' ', ev.summary, h('div', { class: 'when' }, fmtTime(ev.time), ' · ', ev.actor || '–'))))));
}

// ---- dead letters ----

async function pageDLQ() {
  const q = hashQuery();
  const all = q.get('all') === '1';
  const res = await api('GET', '/v1/delivery-attempts?is_dlq=1&limit=50' + (all ? '' : '&recovered=0'));
  const rows = res.delivery_attempts.map((a) => h('tr', {},
    h('td', { class: 'id' }, link('#/attempts/' + a.id, a.id)), h('td', { class: 'id' }, link('#/events/' + a.event_id, a.event_id)),
    h('td', {}, a.destination_name || a.destination_id), h('td', {}, a.response_status ? 'HTTP ' + a.response_status : a.error || '–'), h('td', {}, fmtTime(a.dlq_at)),
    h('td', {}, h('div', { class: 'actions' },
      h('button', {
        type: 'button', class: 'retry-attempt', 'aria-label': 'Retry attempt ' + a.id,
        onclick: busy(async () => {
          const n = (await api('POST', `/v1/delivery-attempts/${a.id}/retry`)).delivery_attempt;
          flash(`Attempt #${n.attempt_number}: ${n.status}${n.response_status ? ' HTTP ' + n.response_status : ''}`, n.status !== 'success');
          render();
        }),
      }, 'Retry'),
      h('button', {
        type: 'button', 'aria-label': 'Retry every failed delivery of event ' + a.event_id,
        onclick: busy(async () => { const r = await api('POST', `/v1/events/${a.event_id}/retry`); flash(r.message || `Retried ${r.retried.length}.`); render(); }),
      }, 'Retry event')))));
  return h('div', {}, h('h1', {}, 'Dead letters'),
    h('div', { class: 'toolbar' }, h('label', { class: 'check' }, h('input', {
      type: 'checkbox', id: 'show-recovered', checked: all, onchange: (e) => setHashQuery('#/dlq', { all: e.target.checked ? '1' : '' }),
    }), 'Also show dead letters delivered by a later retry')),
    h('div', { id: 'dlq' }, table(['Attempt', 'Event', 'Destination', 'Last error', 'Dead-lettered', ''], rows, 'No dead letters. Everything was delivered.')));
}

// ---- issues ----

async function pageIssues() {
  const q = hashQuery();
  const status = q.get('status') || 'open';
  const res = await api('GET', '/v1/issues?limit=50&status=' + encodeURIComponent(status));
  const act = (i, label, fn) => h('button', { type: 'button', class: 'issue-' + label.toLowerCase(), onclick: busy(async () => { await fn(); render(); }) }, label);
  const rows = res.issues.map((i) => h('tr', {},
    h('td', {}, badge(i.status)), h('td', {}, i.title), h('td', {}, i.destination_name || i.destination_id), h('td', {}, i.occurrence_count),
    h('td', {}, fmtTime(i.last_seen_at)),
    h('td', {}, h('div', { class: 'actions' },
      i.status === 'open' ? act(i, 'Acknowledge', () => api('PATCH', '/v1/issues/' + i.id, { status: 'acknowledged' })) : null,
      i.status !== 'resolved' ? act(i, 'Resolve', () => api('PATCH', '/v1/issues/' + i.id, { status: 'resolved' })) : null,
      act(i, 'Retry', async () => { const r = await api('POST', `/v1/issues/${i.id}/retry`); flash(r.message || `Retried ${r.retried.length}.`); })))));
  const sel = h('select', { id: 'issue-status', onchange: (e) => setHashQuery('#/issues', { status: e.target.value }) },
    ['open', 'acknowledged', 'resolved', 'all'].map((v) => h('option', { value: v, selected: v === status }, v)));
  return h('div', {}, h('h1', {}, 'Issues'), h('div', { class: 'toolbar' }, h('label', { for: 'issue-status' }, 'Status', sel)),
    h('div', { id: 'issues' }, table(['Status', 'Issue', 'Destination', 'Count', 'Last seen', ''], rows, `No ${status === 'all' ? '' : status + ' '}issues.`)));
}

// ---- replay ----

async function pageReplay() {
  const pageGen = gen;
  const [dests, jobs] = await Promise.all([api('GET', '/v1/destinations?limit=100'), api('GET', '/v1/replay?limit=20')]);
  const dest = h('select', { id: 'r-dest', required: true }, dests.destinations.map((d) => h('option', { value: d.id }, d.name)));
  const src = h('select', { id: 'r-source' }, await sourceOptions(''));
  const from = h('input', { id: 'r-from', type: 'datetime-local', required: true, value: localFromISO(new Date(Date.now() - 3600e3).toISOString()) });
  // Minutes are the fields' precision: "to" is the next minute, so a webhook of this minute is in the range.
  const to = h('input', { id: 'r-to', type: 'datetime-local', required: true, value: localFromISO(new Date(Date.now() + 60e3).toISOString()) });
  const rate = h('input', { id: 'r-rate', type: 'number', min: 1, max: 1000, value: 10 });
  const form = h('form', {
    class: 'inline card', id: 'replay-form',
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        const body = { destination_id: dest.value, from: isoFromLocal(from.value), to: isoFromLocal(to.value), rate_limit: Number(rate.value) };
        if (src.value) body.source_id = src.value;
        const r = await api('POST', '/v1/replay', body);
        flash(`Replay started: ${r.job.total} events.`);
        render();
      } catch (err) { flash(err.message, true); }
    },
  }, h('label', { for: 'r-dest' }, 'Destination', dest), h('label', { for: 'r-source' }, 'Source', src), h('label', { for: 'r-from' }, 'From', from),
  h('label', { for: 'r-to' }, 'To', to), h('label', { for: 'r-rate' }, 'Per second', rate), h('button', { type: 'submit', class: 'primary' }, 'Replay'));
  const body = h('tbody', {});
  const draw = (list) => body.replaceChildren(...list.map((j) => {
    const bar = h('div', {});
    const done = j.processed + j.skipped; // skipped: removed by history retention before their batch
    bar.style.width = (j.total ? Math.round(100 * done / j.total) : 100) + '%';
    return h('tr', {}, h('td', { class: 'id' }, j.id), h('td', {}, badge(j.status)),
      h('td', {}, h('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': j.total, 'aria-valuenow': done }, bar),
        `${j.processed}/${j.total} · ${j.succeeded} ok · ${j.failed} failed` + (j.skipped ? ` · ${j.skipped} skipped (history expired)` : '')),
      h('td', {}, j.waiting ? String(j.waiting) : '–'),
      h('td', {}, j.status === 'running' ? h('button', {
        type: 'button', class: 'danger',
        onclick: busy(async () => { await api('POST', `/v1/replay/${j.id}/cancel`); flash('Replay cancelled.'); render(); }),
      }, 'Cancel') : null));
  }));
  draw(jobs.jobs);
  const timer = setInterval(async () => {
    try { draw((await api('GET', '/v1/replay?limit=20')).jobs); } catch (_) { /* shown on the next render */ }
  }, 2000);
  onLeave(pageGen, () => clearInterval(timer));
  return h('div', {}, h('h1', {}, 'Replay'), form,
    h('div', { class: 'scroll' }, h('table', { id: 'replays' }, h('thead', {}, h('tr', {}, ['Job', 'Status', 'Progress', 'Waiting on', ''].map((x) => h('th', { scope: 'col' }, x)))), body)));
}

// ---- sources, destinations, connections ----

// resourcePage is a list with a create form, and per row edit, pause or
// resume, delete and the extra actions given.
async function resourcePage(o) {
  const list = (await api('GET', `/v1/${o.path}?limit=100`))[o.path];
  const editing = hashQuery().get('edit');
  const formFor = (item) => {
    const inputs = {};
    const form = h('form', {
      class: 'inline card', id: item ? 'edit-form' : 'create-form', 'aria-label': item ? 'Edit ' + item.name : 'Create a ' + o.one,
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          const body = {};
          for (const f of o.fields) {
            const v = f.read(inputs[f.name]);
            if (v !== undefined && !(item && f.createOnly)) body[f.name] = v;
          }
          if (item) await api('PATCH', `/v1/${o.path}/${item.id}`, body); else await api('POST', `/v1/${o.path}`, body);
          flash(item ? 'Saved.' : `Created the ${o.one}.`);
          if (item) location.hash = '#/' + o.path; else render();
        } catch (err) { flash(err.message, true); }
      },
    }, o.fields.filter((f) => !(item && f.createOnly)).map((f) => {
      const id = (item ? 'e-' : 'c-') + f.name;
      inputs[f.name] = f.input(id, item ? item[f.name] : undefined);
      return f.check ? h('label', { class: 'check', for: id }, inputs[f.name], f.label) : h('label', { for: id }, f.label, inputs[f.name]);
    }), h('button', { type: 'submit', class: 'primary' }, item ? 'Save' : 'Create'), item ? h('a', { class: 'button', href: '#/' + o.path }, 'Cancel') : null);
    return form;
  };
  const rows = list.map((x) => h('tr', {},
    o.cells(x).map((c) => h('td', {}, c)),
    h('td', {}, h('div', { class: 'actions' },
      h('a', { class: 'button', href: `#/${o.path}?edit=${x.id}` }, 'Edit'),
      x.status === 'active' ? h('button', { type: 'button', onclick: busy(async () => { await api('PATCH', `/v1/${o.path}/${x.id}`, { status: 'paused' }); render(); }) }, 'Pause')
        : h('button', { type: 'button', onclick: busy(async () => { await api('PATCH', `/v1/${o.path}/${x.id}`, { status: 'active' }); render(); }) }, 'Resume'),
      (o.extra || (() => []))(x),
      h('button', {
        type: 'button', class: 'danger',
        onclick: busy(async () => {
          if (!confirm(`Delete the ${o.one} "${x.name}"?`)) return;
          await api('DELETE', `/v1/${o.path}/${x.id}`); flash('Deleted.'); render();
        }),
      }, 'Delete')))));
  const item = editing && list.find((x) => x.id === editing);
  if (editing && !item) return notFound(o.one);
  return h('div', {}, h('h1', {}, o.title), item ? formFor(item) : formFor(null),
    table([...o.heads, ''], rows, `No ${o.path} yet: create one above.`), h('div', { id: 'extra' }));
}

const text = (name, label, extra) => ({
  name, label, ...extra,
  input: (id, v) => h('input', { id, name, value: v ?? '', required: extra && extra.required, type: (extra && extra.type) || 'text', placeholder: (extra && extra.placeholder) || '' }),
  read: (el) => el.value.trim() === '' ? undefined : (extra && extra.type === 'number' ? Number(el.value) : el.value.trim()),
});
const check = (name, label) => ({
  name, label, check: true,
  input: (id, v) => h('input', { id, name, type: 'checkbox', checked: v === undefined ? true : !!v }),
  read: (el) => el.checked,
});
const choose = (name, label, options, extra) => ({
  name, label, ...extra,
  input: (id, v) => h('select', { id, name, required: true }, options().map(([val, txt]) => h('option', { value: val, selected: val === v }, txt))),
  read: (el) => el.value || undefined,
});

async function pageSources() {
  return resourcePage({
    path: 'sources', one: 'source', title: 'Sources',
    fields: [text('name', 'Name', { required: true }), text('description', 'Description')],
    heads: ['Name', 'Status', 'Ingest URL'],
    cells: (x) => {
      const url = x.ingest_url.startsWith('/') ? location.origin + x.ingest_url : x.ingest_url; // no public URL configured: this origin's
      return [x.name, badge(x.status), h('span', {}, h('span', { class: 'mono ingest-url' }, url), ' ', copyButton(url, 'Copy the ingest URL of ' + x.name))];
    },
  });
}

async function circuitCell(d) {
  const cell = h('span', { class: 'circuit' }, '…');
  api('GET', `/v1/destinations/${d.id}/circuit`).then((c) => {
    cell.replaceChildren(h('span', {}, badge(c.state), c.state !== 'closed' ? [' ', h('button', {
      type: 'button', onclick: busy(async () => { await api('POST', `/v1/destinations/${d.id}/circuit/reset`); flash('Circuit reset.'); render(); }),
    }, 'Reset circuit')] : null));
  }).catch(() => cell.replaceChildren('–'));
  return cell;
}

async function pageDestinations() {
  const node = await resourcePage({
    path: 'destinations', one: 'destination', title: 'Destinations',
    fields: [text('name', 'Name', { required: true }), text('url', 'URL', { required: true, type: 'url', placeholder: 'https://example.com/webhooks' }),
      text('timeout_ms', 'Timeout (ms)', { type: 'number' }), text('retry_max_attempts', 'Retries', { type: 'number' }), check('retry_enabled', 'Retry failures')],
    heads: ['Name', 'Status', 'URL', 'Circuit'],
    cells: (x) => [x.name, badge(x.status), h('span', { class: 'mono' }, x.url), h('span', { 'data-circuit': x.id })],
    extra: (x) => [h('button', {
      type: 'button', class: 'send-test',
      onclick: busy(async () => {
        const r = await api('POST', `/v1/destinations/${x.id}/test`);
        const a = r.delivery_attempt;
        flash(`Test event sent: ${a ? a.status + (a.response_status ? ' HTTP ' + a.response_status : '') : 'queued'}.`, a && a.status !== 'success');
      }),
    }, 'Send test event')],
  });
  for (const span of node.querySelectorAll('[data-circuit]')) span.replaceWith(await circuitCell({ id: span.dataset.circuit }));
  return node;
}

async function pageConnections() {
  const [srcs, dsts] = await Promise.all([api('GET', '/v1/sources?limit=100'), api('GET', '/v1/destinations?limit=100')]);
  return resourcePage({
    path: 'connections', one: 'connection', title: 'Connections',
    fields: [text('name', 'Name', { required: true }),
      choose('source_id', 'Source', () => srcs.sources.map((x) => [x.id, x.name]), { createOnly: true }),
      choose('destination_id', 'Destination', () => dsts.destinations.map((x) => [x.id, x.name]), { createOnly: true })],
    heads: ['Name', 'Status', 'Source', 'Destination'],
    cells: (x) => [x.name, badge(x.status), x.source_name || x.source_id, x.destination_name || x.destination_id],
  });
}

// ---- start ----

document.getElementById('logout').addEventListener('click', logout);
window.addEventListener('hashchange', () => { document.getElementById('flash').replaceChildren(); render(); });
render();

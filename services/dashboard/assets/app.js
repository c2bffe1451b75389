// HopNGo delivery dashboard: three pages (environments, a release, events) over the dashboard's
// JSON API, kept live by its server-sent event stream. Everything shown is inserted as text, never
// as HTML. Actions are offered only where the signed-in person's grants allow them; the control
// plane checks them again.

const main = document.getElementById('main');
const statusLine = document.getElementById('status');
let me = null;
let live = null;
let refresh = null;

// ---- helpers ---------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

async function api(path, options = {}) {
  const init = { credentials: 'same-origin', headers: { accept: 'application/json' }, ...options };
  if (options.body !== undefined) {
    init.headers = { ...init.headers, 'content-type': 'application/json', 'x-hopngo-csrf': '1' };
    init.body = JSON.stringify(options.body);
  } else if (options.method && options.method !== 'GET') {
    init.headers = { ...init.headers, 'x-hopngo-csrf': '1' };
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) {
    const err = new Error(data.error || response.statusText);
    err.status = response.status;
    throw err;
  }
  return data;
}

function say(text) { statusLine.textContent = text; }

// Shows a page's new content; a live refresh keeps the keyboard focus on the same control.
function show(page) {
  const focused = document.activeElement;
  const key = focused && main.contains(focused) ? (focused.id ? `#${focused.id}` : focused.dataset.action ? `[data-action="${focused.dataset.action}"]` : null) : null;
  main.replaceChildren(page);
  if (key) { const again = main.querySelector(key); if (again) again.focus(); }
}

const PHASE_MARK = {
  PENDING: '○', PROGRESSING: '▶', PAUSED: '⏸', AWAITING_APPROVAL: '✋', SUCCEEDED: '✓',
  ABORTED: '✗', FAILED: '✗', SUPERSEDED: '↷',
};
function phaseBadge(phase) {
  const words = phase.toLowerCase().replace(/_/g, ' ');
  return h('span', { class: `phase phase-${phase}`, 'data-phase': phase },
    h('span', { 'aria-hidden': 'true' }, PHASE_MARK[phase] || '•'), words);
}

function when(t) { return t ? new Date(t).toLocaleString() : ''; }

function can(permission, environment, service) {
  return !!me && me.grants.some((g) => g.environment === environment && g.service === service
    && (g.permissions.includes(permission) || g.permissions.includes('admin')));
}

// One refetch at a time; changes while one runs ask for one more afterwards.
function coalesced(load) {
  let running = false;
  let again = false;
  return async function run() {
    if (running) { again = true; return; }
    running = true;
    try { await load(); } catch (e) { say(e.message); }
    running = false;
    if (again) { again = false; run(); }
  };
}

// Which page's stream is current: a stream given up on is opened again only for the same page.
let streamGeneration = 0;

function follow(query, onEvent) {
  if (live) live.close();
  const generation = ++streamGeneration;
  const source = new EventSource(`/api/stream${query ? `?${query}` : ''}`);
  live = source;
  source.addEventListener('release', (m) => onEvent(JSON.parse(m.data)));
  source.addEventListener('open', () => say('Live'));
  source.addEventListener('error', () => {
    if (source.readyState !== EventSource.CLOSED) { say('Reconnecting to the live stream…'); return; }
    // The browser gave up (the server refused the resume, e.g. a cursor the log no longer
    // holds): start again from now, and reload what the page shows so nothing is missed.
    say('Live stream lost; starting it again…');
    setTimeout(() => {
      if (generation !== streamGeneration) return;
      follow(query, onEvent);
      if (refresh) refresh();
    }, 2000);
  });
}

// ---- actions ---------------------------------------------------------------------------------

const dialog = document.getElementById('action-dialog');
const form = document.getElementById('action-form');
const reasonBox = document.getElementById('action-reason');
const actionError = document.getElementById('action-error');
let pending = null;

document.getElementById('action-cancel').addEventListener('click', () => dialog.close());
form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const text = reasonBox.value.trim();
  if (pending.required && !text) { actionError.textContent = `${pending.label} is required.`; reasonBox.focus(); return; }
  try {
    await pending.run(text);
    dialog.close();
    say(`${pending.title}: done`);
    if (refresh) refresh();
  } catch (e) {
    actionError.textContent = e.message;
  }
});

function ask({ title, detail, label = 'Reason', required = false, run }) {
  pending = { title, label, required, run };
  document.getElementById('action-title').textContent = title;
  document.getElementById('action-detail').textContent = detail;
  document.getElementById('action-label').textContent = required ? `${label} (required)` : `${label} (recorded in the audit log)`;
  reasonBox.value = '';
  reasonBox.required = required;
  actionError.textContent = '';
  dialog.showModal();
  reasonBox.focus();
}

function releaseAction(release, action, title, { required = false, full = false, cls } = {}) {
  return h('button', {
    type: 'button', class: cls, 'data-action': action + (full ? '-full' : ''),
    onclick: () => ask({
      title: `${title}: ${release.service} ${release.artifact} in ${release.environment}`,
      detail: { promote: full ? 'Skips every remaining pause and analysis.' : 'Skips the current pause or analysis step.',
        abort: 'Stops the release and returns all traffic to the stable version.',
        approve: 'Records your approval; the release goes on once enough people approved.',
        reject: 'Records your rejection; the release is aborted.' }[action],
      required,
      run: (reason) => api(`/api/releases/${encodeURIComponent(release.id)}/${action}`, { method: 'POST', body: { reason, full } }),
    }),
  }, title);
}

function releaseActions(release) {
  const { environment: env, service: svc } = release;
  const out = [];
  const active = ['PENDING', 'PROGRESSING', 'PAUSED', 'AWAITING_APPROVAL'].includes(release.phase);
  if (!active) return out;
  if (release.phase === 'AWAITING_APPROVAL' && can('approve', env, svc)) {
    out.push(releaseAction(release, 'approve', 'Approve', { cls: 'primary' }));
    out.push(releaseAction(release, 'reject', 'Reject', { required: true, cls: 'danger' }));
  }
  if (can('deploy', env, svc)) {
    if (['PAUSED', 'PROGRESSING'].includes(release.phase)) {
      out.push(releaseAction(release, 'promote', 'Promote'));
      out.push(releaseAction(release, 'promote', 'Promote fully', { full: true }));
    }
    out.push(releaseAction(release, 'abort', 'Abort', { cls: 'danger' }));
  }
  return out;
}

function ackButton(e) {
  if (e.acknowledgedAt || !can('deploy', e.environment, e.service)) return null;
  return h('button', {
    type: 'button', 'data-action': 'acknowledge',
    onclick: () => ask({
      title: `Acknowledge: ${e.service} in ${e.environment}`,
      detail: `Stops escalating this ${e.condition} release.`,
      label: 'Comment',
      run: (comment) => api(`/api/escalations/${encodeURIComponent(e.releaseId)}/acknowledge`, { method: 'POST', body: { comment } }),
    }),
  }, 'Acknowledge');
}

// ---- environments matrix ---------------------------------------------------------------------

function cell(c, service) {
  const parts = [];
  parts.push(h('div', { class: 'cell-stable' }, c.stable ? `stable ${c.stable}` : 'not released yet'));
  const r = c.release;
  if (r) {
    const line = h('a', { class: 'cell-release', href: `#/releases/${r.id}`, 'aria-label': `${service} ${r.artifact} in ${c.environment}: ${r.phase.toLowerCase().replace(/_/g, ' ')}` },
      `${r.artifact} `, phaseBadge(r.phase));
    parts.push(line);
    if (r.active) {
      parts.push(h('div', { class: 'weight', 'data-weight': r.canaryWeight },
        h('span', { class: 'bar', role: 'img', 'aria-label': `canary weight ${r.canaryWeight} percent` },
          h('span', { 'data-w': r.canaryWeight })),
        `${r.canaryWeight} %`, r.step ? ` · step ${r.step}` : ''));
    }
    if (r.pendingApproval) {
      parts.push(h('span', { class: 'badge' }, `waiting for approval ${r.pendingApproval.approvals}/${r.pendingApproval.minApprovals}`));
    }
  }
  if (c.escalation) parts.push(h('span', { class: 'badge alert' }, `⚠ escalated: ${c.escalation}`));
  return h('td', { 'data-service': service, 'data-environment': c.environment, 'data-phase': r ? r.phase : '' }, parts);
}

function widthBars(root) {
  // The content security policy forbids inline styles in markup, not ones set from script.
  for (const bar of root.querySelectorAll('[data-w]')) bar.style.width = `${bar.dataset.w}%`;
}

async function matrixPage() {
  const m = await api('/api/matrix');
  const head = h('tr', {}, h('th', { scope: 'col' }, 'Service'), m.environments.map((e) => h('th', { scope: 'col' }, e.name,
    e.freezes.map((f) => h('div', { class: 'badge alert' }, `❄ frozen until ${when(f.until)}: ${f.reason}`)),
    e.windows.map((w) => h('div', { class: 'badge alert' }, `❄ ${w.window} until ${when(w.until)}`)))));
  const rows = m.rows.map((row) => h('tr', {}, h('th', { scope: 'row' }, row.service), row.cells.map((c) => cell(c, row.service))));
  const waiting = m.awaitingApproval.length
    ? h('table', { id: 'awaiting' }, h('caption', {}, 'Waiting for approval'),
      h('tr', {}, ['Service', 'Environment', 'Artifact', 'Approvals', 'Asked by', ''].map((t) => h('th', { scope: 'col' }, t))),
      m.awaitingApproval.map((r) => h('tr', {}, h('td', {}, h('a', { href: `#/releases/${r.id}` }, r.service)), h('td', {}, r.environment),
        h('td', {}, r.artifact), h('td', {}, `${r.pendingApproval ? r.pendingApproval.approvals : 0}/${r.pendingApproval ? r.pendingApproval.minApprovals : 1}`),
        h('td', {}, r.createdBy), h('td', {}, h('div', { class: 'actions' }, releaseActions(r))))))
    : h('p', { class: 'muted', id: 'awaiting' }, 'Nothing is waiting for approval.');
  const page = h('div', {}, h('h1', {}, 'Environments'),
    h('table', { class: 'matrix', id: 'matrix' }, h('caption', { class: 'muted' }, 'Every service in every environment: the stable version, and the newest release with its phase and canary weight'),
      h('thead', {}, head), h('tbody', {}, rows)),
    h('h2', {}, 'Approvals'), waiting);
  widthBars(page);
  show(page);
}

// ---- release page ------------------------------------------------------------------------------

const STEP_MARK = { SUCCEEDED: '✓', RUNNING: '▶', FAILED: '✗', SKIPPED: '↷', PENDING: '○' };

function steps(r) {
  return h('ol', { class: 'steps', 'aria-label': 'Plan' }, r.steps.map((st) => h('li', {
    'aria-current': ['PENDING', 'PROGRESSING', 'PAUSED', 'AWAITING_APPROVAL'].includes(r.phase) && st.index === r.currentStepIndex ? 'step' : null,
    'data-status': st.status,
  }, h('span', { class: 'mark', 'aria-hidden': 'true' }, STEP_MARK[st.status] || '•'),
  `${st.index + 1}. ${st.name}`, h('span', { class: 'muted' }, ` (${st.status.toLowerCase()})`), st.summary ? h('div', { class: 'muted' }, st.summary) : null)));
}

function scale(values, lo, hi) {
  let min = Math.min(...values);
  let max = Math.max(...values);
  if (!Number.isFinite(min)) { min = 0; max = 1; }
  if (min === max) { min -= 0.5 * Math.abs(min || 1); max += 0.5 * Math.abs(max || 1); }
  const pad = (max - min) * 0.08;
  min -= pad; max += pad;
  return { min, max, y: (v) => hi - ((v - min) / (max - min)) * (hi - lo) };
}

function timeAxis(times, left, right) {
  const min = Math.min(...times);
  const max = Math.max(...times);
  const span = max - min || 1;
  return (t) => left + ((t - min) / span) * (right - left);
}

function fmt(v) { return Math.abs(v) >= 100 || v === 0 ? String(Math.round(v * 100) / 100) : v.toPrecision(3); }

const TRACK_STYLE = { canary: { stroke: '#0b5cad', dash: null }, stable: { stroke: '#57606a', dash: '5 3' }, baseline: { stroke: '#8250df', dash: '2 2' } };

function chart(c) {
  const W = 460; const H = 220; const L = 52; const R = W - 10; const T = 12; const B = H - 26;
  const points = c.series.flatMap((se) => se.points.filter((p) => p.time));
  const times = points.map((p) => Date.parse(p.time));
  const values = points.filter((p) => p.value !== null).map((p) => p.value).concat(c.thresholds.map((t) => t.value));
  const ys = scale(values, T, B);
  const x = times.length ? timeAxis(times, L, R) : () => L;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': `t-${c.metric}` });
  const failing = points.filter((p) => p.failing).length;
  svg.append(s('title', { id: `t-${c.metric}` }, `${c.metric}: ${points.length} measurements, ${failing} failing; ${c.thresholds.map((t) => `${t.condition} when result ${t.op} ${t.value}`).join(', ')}`));
  svg.append(s('line', { x1: L, y1: B, x2: R, y2: B, stroke: '#8c959f' }), s('line', { x1: L, y1: T, x2: L, y2: B, stroke: '#8c959f' }));
  for (const v of [ys.min, (ys.min + ys.max) / 2, ys.max]) {
    svg.append(s('text', { x: L - 4, y: ys.y(v) + 4, 'text-anchor': 'end', 'font-size': 10, fill: '#57606a' }, fmt(v)));
  }
  if (times.length) {
    svg.append(s('text', { x: L, y: H - 8, 'font-size': 10, fill: '#57606a' }, new Date(Math.min(...times)).toLocaleTimeString()),
      s('text', { x: R, y: H - 8, 'font-size': 10, fill: '#57606a', 'text-anchor': 'end' }, new Date(Math.max(...times)).toLocaleTimeString()));
  }
  for (const t of c.thresholds) {
    const color = t.condition === 'failure' ? '#c62828' : '#1a7f37';
    svg.append(s('line', { x1: L, x2: R, y1: ys.y(t.value), y2: ys.y(t.value), stroke: color, 'stroke-dasharray': '6 4', class: `threshold threshold-${t.condition}`, 'data-value': t.value }),
      s('text', { x: R - 2, y: ys.y(t.value) - 3, 'text-anchor': 'end', 'font-size': 10, fill: color }, `${t.condition}: ${t.op} ${t.value}`));
  }
  for (const se of c.series) {
    const style = TRACK_STYLE[se.track] || TRACK_STYLE.canary;
    const pts = se.points.filter((p) => p.time && p.value !== null);
    if (pts.length > 1) {
      svg.append(s('polyline', { fill: 'none', stroke: style.stroke, 'stroke-width': 2, 'stroke-dasharray': style.dash, 'data-track': se.track,
        points: pts.map((p) => `${x(Date.parse(p.time)).toFixed(1)},${ys.y(p.value).toFixed(1)}`).join(' ') }));
    }
    for (const p of se.points.filter((q) => q.time)) {
      const px = x(Date.parse(p.time));
      const py = p.value === null ? B : ys.y(p.value);
      const label = `${se.track} ${when(p.time)}: ${p.value === null ? 'no value' : p.value} (${p.phase.toLowerCase()})${p.message ? ` ${p.message}` : ''}`;
      if (p.failing) {
        svg.append(s('g', { class: 'point failing', 'data-track': se.track }, s('title', {}, label),
          s('path', { d: `M${px - 5},${py - 5}L${px + 5},${py + 5}M${px - 5},${py + 5}L${px + 5},${py - 5}`, stroke: '#c62828', 'stroke-width': 2.5 })));
      } else {
        svg.append(s('g', { class: 'point', 'data-track': se.track }, s('title', {}, label),
          s('circle', { cx: px, cy: py, r: 3, fill: p.phase === 'SUCCESSFUL' ? style.stroke : '#fff', stroke: style.stroke })));
      }
    }
  }
  const legend = h('div', { class: 'legend' }, c.series.map((se) => h('span', {}, `${se.track === 'canary' ? '━' : '┅'} ${se.track} (${se.kind || 'run'})`)),
    h('span', {}, '✗ failing measurement'), h('span', {}, '╌ thresholds'));
  return h('figure', { class: 'card chart', 'data-metric': c.metric },
    h('h3', {}, `${c.metric}`, h('span', { class: 'muted' }, ` ${c.severity ? `(${c.severity.toLowerCase()})` : ''}${c.dryRun ? ' dry run' : ''}`)), svg, legend,
    h('details', {}, h('summary', {}, 'Measurements as a table'),
      h('table', {}, h('tr', {}, ['Track', 'Time', 'Value', 'Result'].map((t) => h('th', { scope: 'col' }, t))),
        c.series.flatMap((se) => se.points.map((p) => h('tr', {}, h('td', {}, se.track), h('td', {}, when(p.time)), h('td', {}, p.value === null ? 'no value' : p.value),
          h('td', {}, `${p.failing ? '✗ ' : ''}${p.phase.toLowerCase()}`)))))));
}

function weightsChart(points) {
  if (!points.length) return h('p', { class: 'muted' }, 'No traffic shifted yet.');
  const W = 460; const H = 140; const L = 40; const R = W - 10; const T = 10; const B = H - 24;
  const times = points.map((p) => Date.parse(p.time)).concat([Date.now()]);
  const x = timeAxis(times, L, R);
  const y = (w) => B - (w / 100) * (B - T);
  let d = '';
  points.forEach((p, i) => {
    const px = x(Date.parse(p.time));
    d += i === 0 ? `M${px},${y(p.weight)}` : `H${px}V${y(p.weight)}`;
  });
  d += `H${R}`;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': 'weights-title' },
    s('title', { id: 'weights-title' }, `Canary weight over time: ${points.map((p) => `${p.weight}% at ${when(p.time)}`).join(', ')}`),
    s('line', { x1: L, y1: B, x2: R, y2: B, stroke: '#8c959f' }),
    [0, 50, 100].map((w) => s('text', { x: L - 4, y: y(w) + 4, 'text-anchor': 'end', 'font-size': 10, fill: '#57606a' }, `${w}%`)),
    s('path', { d, fill: 'none', stroke: '#0b5cad', 'stroke-width': 2 }));
  return h('figure', { class: 'card chart', id: 'weights' }, svg);
}

function table(caption, headers, rows, attrs = {}) {
  return h('table', attrs, h('caption', {}, caption), h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t))), rows);
}

async function releasePage(id) {
  const p = await api(`/api/releases/${encodeURIComponent(id)}`);
  const r = p.release;
  const figure = p.timeline.failureToStableSeconds;
  const header = h('div', { class: 'card' },
    h('h1', {}, `${r.service} ${r.artifact} in ${r.environment} `, phaseBadge(r.phase)),
    h('dl', { class: 'kv' },
      h('dt', {}, 'Stable'), h('dd', {}, r.stableArtifact || '—'),
      h('dt', {}, 'Strategy'), h('dd', {}, r.strategy.toLowerCase().replace(/_/g, ' ')),
      h('dt', {}, 'Canary weight'), h('dd', { id: 'canary-weight' }, `${r.canaryWeight} %`),
      h('dt', {}, 'Message'), h('dd', { id: 'release-message' }, r.message || '—'),
      h('dt', {}, 'Asked by'), h('dd', {}, `${r.createdBy}${r.reason ? ` — ${r.reason}` : ''}`),
      h('dt', {}, 'Created'), h('dd', {}, when(r.createdAt)),
      r.pendingApproval ? [h('dt', {}, 'Approval'), h('dd', {}, `${r.pendingApproval.approvals}/${r.pendingApproval.minApprovals} (roles: ${r.pendingApproval.roles.join(', ') || 'approver'}${r.pendingApproval.allowSelfApproval ? '' : ', not the person who asked'})`)] : null,
      figure !== undefined ? [h('dt', {}, 'Failure to stable'), h('dd', { class: 'figure', id: 'failure-to-stable' }, `${figure.toFixed(2)} s from the first failing measurement to all traffic back on ${r.stableArtifact || 'stable'}`)] : null),
    h('div', { class: 'actions', id: 'release-actions' }, releaseActions(r), p.escalation ? ackButton(p.escalation) : null));
  const charts = p.charts.length
    ? h('div', { class: 'charts', id: 'charts' }, p.charts.map(chart))
    : h('p', { class: 'muted', id: 'charts' }, 'No analysis measured this release yet.');
  const page = h('div', {}, h('p', {}, h('a', { href: '#/' }, '← Environments')), header,
    h('h2', {}, 'Plan'), steps(r),
    h('h2', {}, 'Canary weight over time'), weightsChart(p.weights),
    h('h2', {}, 'Analysis'), charts,
    p.migrations.length ? table('Migrations', ['Database', 'Command', 'Phase', 'Version', 'Message'], p.migrations.map((m) => h('tr', {},
      h('td', {}, m.database), h('td', {}, m.command.toLowerCase()), h('td', {}, m.phase.toLowerCase()),
      h('td', {}, `${m.versionBefore || '—'} → ${m.versionAfter || '—'}`), h('td', {}, m.message)))) : null,
    r.approvals && r.approvals.length ? table('Approvals', ['Who', 'Decision', 'Reason', 'When'], r.approvals.map((a) => h('tr', {},
      h('td', {}, a.user), h('td', {}, a.approved ? '✓ approved' : '✗ rejected'), h('td', {}, a.reason), h('td', {}, when(a.decidedAt))))) : null,
    table('Timeline', ['+ seconds', 'Time', 'Source', 'What'], p.timeline.entries.map((e) => h('tr', {},
      h('td', {}, e.offsetSeconds.toFixed(2)), h('td', {}, when(e.time)), h('td', {}, e.source), h('td', {}, e.what))), { id: 'timeline' }));
  show(page);
}

// ---- events page -------------------------------------------------------------------------------

const FILTERS = ['service', 'environment', 'type', 'release', 'severity'];

function eventRow(e) {
  return h('tr', { 'data-cursor': e.cursor },
    h('td', {}, when(e.time)), h('td', {}, e.severity.toLowerCase()),
    h('td', {}, e.service), h('td', {}, e.environment),
    h('td', {}, h('a', { href: `#/releases/${e.releaseId}` }, e.artifact || e.releaseId)),
    h('td', {}, e.transition), h('td', {}, e.phase ? phaseBadge(e.phase) : ''), h('td', {}, e.message));
}

async function eventsPage(params) {
  const query = new URLSearchParams();
  for (const f of FILTERS) if (params.get(f)) query.set(f, params.get(f));
  const [events, escalations] = await Promise.all([api(`/api/events?${query}&last=200`), api('/api/escalations')]);
  const inputs = FILTERS.map((f) => {
    const id = `filter-${f}`;
    const input = f === 'severity'
      ? h('select', { id, name: f }, ['', 'info', 'warning', 'error', 'critical'].map((v) => h('option', { value: v, selected: params.get(f) === v }, v || 'any')))
      : h('input', { id, name: f, value: params.get(f) || '', maxlength: 128, autocomplete: 'off' });
    return h('label', { for: id }, f === 'type' ? 'event type' : f, input);
  });
  const filterForm = h('form', { class: 'filters', role: 'search', onsubmit: (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    for (const f of FILTERS) { const v = document.getElementById(`filter-${f}`).value.trim(); if (v) next.set(f, v); }
    location.hash = `#/events?${next}`;
  } }, inputs, h('button', { type: 'submit' }, 'Filter'));
  const body = h('tbody', { id: 'event-rows' }, events.slice().reverse().map(eventRow));
  const open = escalations.filter((e) => !e.acknowledgedAt);
  const page = h('div', {}, h('h1', {}, 'Events and escalations'),
    h('h2', {}, 'Escalations'),
    escalations.length ? table('Releases that need a person', ['Service', 'Environment', 'Release', 'Condition', 'Since', 'Notified', 'Acknowledged', ''],
      escalations.map((e) => h('tr', { 'data-release': e.releaseId }, h('td', {}, e.service), h('td', {}, e.environment),
        h('td', {}, h('a', { href: `#/releases/${e.releaseId}` }, e.releaseId)), h('td', {}, `⚠ ${e.condition}`), h('td', {}, when(e.since)),
        h('td', {}, e.levelsNotified.join(', ')), h('td', {}, e.acknowledgedBy ? `✓ ${e.acknowledgedBy}${e.comment ? `: ${e.comment}` : ''}` : 'no'),
        h('td', {}, ackButton(e)))), { id: 'escalations' }) : h('p', { class: 'muted', id: 'escalations' }, 'No escalations.'),
    h('p', { class: 'muted' }, `${open.length} open`),
    h('h2', {}, 'Live events'), filterForm,
    table('Newest first; new events appear at the top', ['Time', 'Severity', 'Service', 'Environment', 'Release', 'Transition', 'Phase', 'Message'], body, { id: 'events' }));
  show(page);
  follow(query.toString(), (e) => {
    body.prepend(eventRow(e));
    while (body.children.length > 500) body.lastElementChild.remove();
  });
}

// ---- sign-in and routing -------------------------------------------------------------------------

function loginPage(message) {
  document.getElementById('nav').hidden = true;
  document.getElementById('who').replaceChildren();
  const box = h('textarea', { id: 'token', rows: 4, autocomplete: 'off', spellcheck: 'false', required: true });
  const error = h('p', { class: 'error', role: 'alert' }, message || '');
  main.replaceChildren(h('div', { class: 'card login' }, h('h1', {}, 'Sign in'),
    h('p', {}, 'Paste the token you use with hopctl (a static token or your identity provider\'s JWT). It is kept in an HttpOnly cookie for this browser and sent to the control plane with every call; what you may do is what the access policy grants you.'),
    h('form', { id: 'login', onsubmit: async (ev) => {
      ev.preventDefault();
      try { await api('/api/session', { method: 'POST', body: { token: box.value.trim() } }); start(); } catch (e) { error.textContent = e.message; }
    } }, h('label', { for: 'token' }, 'Token'), box, error, h('button', { type: 'submit', class: 'primary' }, 'Sign in'))));
  box.focus();
}

async function route() {
  if (live) { live.close(); live = null; }
  streamGeneration += 1;
  const [path, queryText] = (location.hash.slice(1) || '/').split('?');
  const params = new URLSearchParams(queryText || '');
  for (const a of document.querySelectorAll('#nav a')) a.removeAttribute('aria-current');
  try {
    if (path.startsWith('/releases/')) {
      const id = decodeURIComponent(path.slice('/releases/'.length));
      refresh = coalesced(() => releasePage(id));
      await releasePage(id);
      follow('', (e) => { if (e.releaseId === id) refresh(); });
    } else if (path === '/events') {
      document.querySelector('#nav a[data-page=events]').setAttribute('aria-current', 'page');
      refresh = coalesced(() => eventsPage(params));
      await eventsPage(params);
    } else {
      document.querySelector('#nav a[data-page=matrix]').setAttribute('aria-current', 'page');
      refresh = coalesced(matrixPage);
      await matrixPage();
      follow('', () => refresh());
    }
  } catch (e) {
    if (e.status === 401) { loginPage('Your session ended; sign in again.'); return; }
    main.replaceChildren(h('p', { class: 'error', role: 'alert' }, e.message));
  }
}

async function start() {
  try {
    me = await api('/api/me');
  } catch (e) {
    if (e.status === 401) { loginPage(); return; }
    main.replaceChildren(h('p', { class: 'error', role: 'alert' }, e.message));
    return;
  }
  document.getElementById('nav').hidden = false;
  const roles = [...new Set(me.grants.flatMap((g) => g.roles))].join(', ') || 'no roles';
  document.getElementById('who').replaceChildren(h('span', { id: 'user' }, `${me.user} (${roles})`),
    h('button', { type: 'button', onclick: async () => { await api('/api/session', { method: 'DELETE' }); me = null; loginPage('Signed out.'); } }, 'Sign out'));
  route();
}

window.addEventListener('hashchange', () => { if (me) route(); });
start();

// The console: signs every admin API call (sigv4.js), renders every
// string the API returns as text (textContent, never HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "usage-plans-console";
const DAYS = 30;
const AUTO_REFRESH_MS = 5000;

const state = {
  credentials: null,
  region: "us-east-1",
  plans: [],
  page: { positions: [null], index: 0, next: null },
  keys: new Map(), // id -> key shown on this page (with .plans)
  selected: null, // { key, planId }
  usage: [], // [{ day, used, remaining }]
  usageOf: null, // the { keyId, planId } that `usage` is of
  timer: null,
  busy: false,
  again: null,
  // Answers that arrive after a newer request, a change or a sign-out
  // are dropped: each counter names the latest of its kind.
  // The key row that last had focus: the list's one tab stop, across
  // redraws (see renderKeys).
  keyStop: null,
  keysGeneration: 0,
  usageGeneration: 0,
  selectGeneration: 0,
  session: 0,
  // A key let go (see letGo) whose news the next refresh asked for keeps
  // on screen: a refresh that let it go just before (the 5-second one, or
  // one already running) left nothing for that one to find, and its
  // "Refreshed at" hid why the key's pane closed.
  goneNews: false,
  // The last refresh failed, and said so: the next that succeeds says so.
  refreshFailed: false,
};

// ---- the API -------------------------------------------------------------

class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
  describe() {
    return `${this.status} ${this.type}: ${this.message}`;
  }
}

async function api(method, segments, { query = [], body, credentials = state.credentials } = {}) {
  const text = body === undefined ? "" : JSON.stringify(body);
  const signed = await SigV4.sign({ method, segments, query, body: text, credentials, host: location.host });
  const headers = { ...signed.headers, Accept: "application/json" };
  if (text) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(signed.url, { method, headers, body: text || undefined, cache: "no-store", credentials: "omit" });
  } catch (e) {
    throw new ApiError(0, "NetworkError", `The admin API could not be reached: ${e.message}`);
  }
  const raw = await response.text();
  let answer = null;
  try {
    answer = raw ? JSON.parse(raw) : null;
  } catch (_) {
    answer = null;
  }
  if (!response.ok) {
    const type = (response.headers.get("x-amzn-ErrorType") || "").split(":")[0] || "Error";
    const message = (answer && (answer.message || answer.Message)) || raw || response.statusText;
    const error = new ApiError(response.status, type, message);
    // Credentials the API no longer takes (changed or removed since the
    // sign-in): the session ends, instead of failing every 5 seconds.
    if (response.status === 403 && credentials === state.credentials) signedOutBy(error);
    throw error;
  }
  return answer;
}

// Every page of a list operation.
async function all(segments, query = []) {
  const items = [];
  let position = null;
  do {
    const q = [...query, ["limit", "500"]];
    if (position) q.push(["position", position]);
    const page = await api("GET", segments, { query: q });
    items.push(...(page.item || []));
    position = page.position || null;
  } while (position);
  return items;
}

// ---- small helpers ---------------------------------------------------------

// An API error as "status type: message"; any other as its message.
function describe(e) {
  return e instanceof ApiError ? e.describe() : e.message;
}

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// A name as it is: the Unicode controls that reorder text (U+202A-202E,
// U+2066-2069) are shown as their code points, not obeyed ("\u202Eevil"
// read "live").
function shown(name) {
  return String(name).replace(/[\u202a-\u202e\u2066-\u2069]/g, (c) => `<U+${c.charCodeAt(0).toString(16).toUpperCase()}>`);
}

function say(text, error = false) {
  state.goneNews = false;
  state.refreshFailed = false;
  const node = $("answer");
  node.textContent = text;
  node.classList.toggle("error", error);
}

// Runs an action and reports the API's answer (or its error) in the page.
async function act(what, action) {
  try {
    const answer = await action();
    // A key's value is shown once, where a key is created, never in the
    // answer line (an UpdateApiKey answer carries it too).
    const shown = typeof answer === "string" ? answer : JSON.stringify(answer, (name, v) => (name === "value" ? undefined : v));
    say(`${what}: ${shown}`);
    return answer;
  } catch (e) {
    say(`${what} failed: ${describe(e)}`, true);
    return undefined;
  }
}

function utcDay(offset) {
  const d = new Date();
  d.setUTCHours(0, 0, 0, 0);
  d.setUTCDate(d.getUTCDate() + offset);
  return d.toISOString().slice(0, 10);
}

function describeThrottle(t) {
  return t ? `${t.rateLimit} / ${t.burstLimit}` : "none";
}

function describeQuota(q) {
  return q ? `${q.limit} per ${String(q.period).toLowerCase()}${q.offset ? ` (offset ${q.offset})` : ""}` : "none";
}

// ---- sign in ---------------------------------------------------------------

function loadCredentials() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORE) || "null");
    if (saved && saved.accessKeyId && saved.secretAccessKey && saved.region) return saved;
  } catch (_) {
    /* nothing usable saved */
  }
  return null;
}

async function signIn(event) {
  event.preventDefault();
  const form = event.target;
  const credentials = {
    accessKeyId: form.accessKeyId.value.trim(),
    secretAccessKey: form.secretAccessKey.value,
    region: form.region.value.trim() || state.region,
  };
  $("sign-in-error").textContent = "";
  // An access key id or region goes in a header, which takes ASCII only:
  // the browser refuses to send it, and said so as a network failure.
  const unsendable = [credentials.accessKeyId, credentials.region].some((v) => /[^\x20-\x7e]/.test(v));
  if (unsendable) {
    $("sign-in-error").textContent = "The access key id and region must be ASCII letters, digits or punctuation";
    return;
  }
  try {
    // The credentials are good when a signed call is accepted.
    await api("GET", ["usageplans"], { query: [["limit", "1"]], credentials });
  } catch (e) {
    $("sign-in-error").textContent = describe(e);
    return;
  }
  form.secretAccessKey.value = "";
  sessionStorage.setItem(STORE, JSON.stringify(credentials));
  start(credentials);
}

function signOut() {
  sessionStorage.removeItem(STORE);
  state.credentials = null;
  clearInterval(state.timer);
  forgetPage();
  $("app").hidden = true;
  $("session").hidden = true;
  $("sign-in-view").hidden = false;
}

// Signs out because the API refused the session's credentials, and says so
// where they are entered again.
function signedOutBy(error) {
  signOut();
  $("sign-in-error").textContent = `Signed out: the admin API refused these credentials (${error.describe()})`;
}

// Nothing of a session stays in the page after it (a created key's value
// least of all), and no answer still on its way is drawn.
function forgetPage() {
  state.session += 1;
  state.keysGeneration += 1;
  state.usageGeneration += 1;
  state.selectGeneration += 1;
  state.plans = [];
  state.keys = new Map();
  state.selected = null;
  state.usage = [];
  state.usageOf = null;
  state.keyStop = null;
  state.page = { positions: [null], index: 0, next: null };
  for (const id of ["plans", "keys", "key-plan"]) $(id).replaceChildren();
  for (const id of ["created", "answer", "who", "key-name", "key-id", "key-enabled", "key-quota"]) $(id).textContent = "";
  $("search").value = "";
  renderUsage();
  $("key-detail").hidden = true;
  $("no-key").hidden = false;
}

function start(credentials) {
  state.credentials = credentials;
  $("who").textContent = `${credentials.accessKeyId} (${credentials.region})`;
  $("sign-in-view").hidden = true;
  $("app").hidden = false;
  $("session").hidden = false;
  state.page = { positions: [null], index: 0, next: null };
  // Signed in, the keyboard starts at the key search (the form it came
  // from is hidden), once the first refresh drew it.
  refresh().then(() => {
    if (document.activeElement === document.body || !document.activeElement) $("search").focus();
  });
  clearInterval(state.timer);
  state.timer = setInterval(() => {
    if ($("auto-refresh").checked && document.visibilityState === "visible") refresh(true);
  }, AUTO_REFRESH_MS);
}

// ---- views -----------------------------------------------------------------

// One refresh at a time; a refresh asked for meanwhile runs right after
// (and leaves the news of a key let go by the one before on screen: it
// said "Refreshed at" over it).
async function refresh(quiet = false, keepNews = false) {
  if (!state.credentials) return;
  if (state.busy) {
    state.again = state.again || (quiet ? "quiet" : "loud");
    return;
  }
  state.busy = true;
  const session = state.session;
  let gone = false;
  try {
    await loadPlans();
    gone = await loadKeys(quiet);
    if (state.selected) gone = await loadSelectedUsage();
    // A quiet refresh leaves an action's answer on screen, but not the
    // failure of a refresh before it: the API is back.
    const loud = !quiet || state.refreshFailed;
    if (loud && !gone && !keepNews && session === state.session) {
      if (state.goneNews) state.goneNews = false;
      else say(`Refreshed at ${new Date().toISOString().slice(11, 19)} UTC`);
    }
  } catch (e) {
    if (session === state.session) {
      say(`Refresh failed: ${describe(e)}`, true);
      state.refreshFailed = true;
    }
  } finally {
    state.busy = false;
  }
  const again = state.again;
  state.again = null;
  if (again) await refresh(again === "quiet", gone || keepNews);
}

async function loadPlans() {
  const session = state.session;
  const plans = await all(["usageplans"]);
  if (session !== state.session) return;
  state.plans = plans;
  const body = $("plans");
  const rows = state.plans.map((p) => {
    const tr = el("tr", undefined, { "data-plan-id": p.id });
    tr.append(
      el("td", shown(p.name), { class: "name" }),
      el("td", p.id, { class: "id" }),
      el("td", describeThrottle(p.throttle)),
      el("td", describeQuota(p.quota)),
      el("td", (p.apiStages || []).map((s) => `${s.apiId}:${s.stage}`).join(", ") || "none", { class: "name" })
    );
    const count = el("td", "…");
    tr.append(count);
    // A count up to 100 (a page); "100+" beyond, so a refresh stays cheap.
    api("GET", ["usageplans", p.id, "keys"], { query: [["limit", "100"]] })
      .then((page) => (count.textContent = page.position ? `${page.item.length}+` : String(page.item.length)))
      .catch(() => (count.textContent = "?"));
    return tr;
  });
  body.replaceChildren(...rows);
  const select = $("create-plan");
  const chosen = select.value;
  select.replaceChildren(el("option", "(no plan)", { value: "" }), ...state.plans.map((p) => el("option", shown(p.name), { value: p.id })));
  if (chosen) select.value = chosen;
}

// The shown page of keys. A quiet refresh (the 5-second one) asks again
// only for the plans of keys new to the page and of the chosen key: the
// rows keep what they showed (a page of 500 keys asked for 500 keys' plans
// every 5 seconds, and each row showed "…" meanwhile); any other load asks
// for all. `true`: the chosen key is gone, and was let go.
async function loadKeys(quiet = false) {
  const query = [["limit", $("page-size").value]];
  const position = state.page.positions[state.page.index];
  if (position) query.push(["position", position]);
  const name = $("search").value;
  if (name) query.push(["name", name]);
  // A search typed meanwhile (or a newer refresh) wins over this answer.
  const generation = ++state.keysGeneration;
  const page = await api("GET", ["apikeys"], { query });
  if (generation !== state.keysGeneration) return false;
  const keys = page.item || [];
  state.page.next = page.position || null;
  // Which plans each key of this page is in: one call per shown key, a
  // few at a time; the rows show first.
  const before = state.keys;
  const chosen = state.selected ? state.selected.key.id : null;
  state.keys = new Map(
    keys.map((k) => {
      const known = quiet && k.id !== chosen ? before.get(k.id) : undefined;
      return [k.id, { ...k, plans: known ? known.plans : null }];
    })
  );
  renderKeys();
  // For the browser test: when the first rows were on screen.
  if (window.__keysRenderedAt === undefined && keys.length) window.__keysRenderedAt = performance.now();
  const unknown = keys.filter((k) => state.keys.get(k.id).plans === null);
  await inBatches(unknown, 8, async (k) => {
    try {
      const plans = await all(["usageplans"], [["keyId", k.id]]);
      const shown = state.keys.get(k.id);
      if (shown) {
        shown.plans = plans.map((p) => p.id);
        renderPlansOf(shown);
      }
    } catch (_) {
      /* the key left between the two calls */
    }
  });
  if (generation !== state.keysGeneration || !state.selected) return false;
  if (!state.keys.has(state.selected.key.id)) return loadSelectedKey();
  state.selected.key = state.keys.get(state.selected.key.id);
  renderSelected();
  return false;
}

// The chosen key when the shown page does not have it (another page or
// search): read on its own, so what the pane shows is the key as it is.
// `true`: it is gone, and was let go.
async function loadSelectedKey() {
  const id = state.selected.key.id;
  let key;
  try {
    const [read, plans] = await Promise.all([api("GET", ["apikeys", id]), all(["usageplans"], [["keyId", id]])]);
    key = { ...read, plans: plans.map((p) => p.id) };
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) throw e;
    if (!state.selected || state.selected.key.id !== id) return false;
    letGo(id);
    return true;
  }
  if (!state.selected || state.selected.key.id !== id) return false;
  state.selected.key = key;
  renderSelected();
  return false;
}

// Marks `tr` as the chosen key's row, for the eye and for assistive
// technology (aria-current), or not.
function markChosen(tr, chosen) {
  tr.classList.toggle("selected", chosen);
  if (chosen) tr.setAttribute("aria-current", "true");
  else tr.removeAttribute("aria-current");
}

// The key rows are one tab stop (`tr`, or the first row), not one each:
// Tab goes past the list, the arrow keys, Home and End move within it.
function rove(tr) {
  for (const row of $("keys").children) row.tabIndex = row === tr ? 0 : -1;
  state.keyStop = tr.dataset.keyId;
}

function moveWithin(e) {
  const row = e.currentTarget;
  const to = {
    ArrowDown: row.nextElementSibling,
    ArrowUp: row.previousElementSibling,
    Home: $("keys").firstElementChild,
    End: $("keys").lastElementChild,
  }[e.key];
  if (to === undefined) return false;
  e.preventDefault();
  if (to) to.focus();
  return true;
}

// The chosen key is gone (deleted, or out of its plan, elsewhere): the pane
// lets it go.
function letGo(gone) {
  state.selected = null;
  $("key-detail").hidden = true;
  $("no-key").hidden = false;
  for (const tr of $("keys").children) markChosen(tr, false);
  say(`Key ${gone} is gone (deleted, or taken out of its plan)`, true);
  state.goneNews = true;
}

async function inBatches(items, width, work) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
}

function planName(id) {
  const plan = state.plans.find((p) => p.id === id);
  return plan ? shown(plan.name) : id;
}

// A new row for `key`: its cells (filled by `fillKeyRow`) and what the
// pointer and the keyboard do on it.
function keyRow(key) {
  const tr = el("tr", undefined, { "data-key-id": key.id, tabindex: "-1" });
  tr.append(el("td", undefined, { class: "name" }), el("td", key.id, { class: "id" }), el("td"), el("td", "…", { class: "plans name" }));
  tr.addEventListener("click", () => select(key.id));
  tr.addEventListener("focus", () => rove(tr));
  tr.addEventListener("keydown", (e) => {
    if (moveWithin(e)) return;
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      select(key.id);
    }
  });
  return tr;
}

// Shows `key` as it is now in its row, changing only what changed (the
// plans cell keeps what it showed until they are known again).
function fillKeyRow(tr, key) {
  const [name, , enabled] = tr.children;
  const texts = [
    [name, key.name ? shown(key.name) : "(no name)"],
    [enabled, key.enabled ? "yes" : "no"],
  ];
  for (const [cell, text] of texts) if (cell.textContent !== text) cell.textContent = text;
  markChosen(tr, Boolean(state.selected && state.selected.key.id === key.id));
  if (key.plans) renderPlansOf(key, tr);
}

// The key list, drawn from `state.keys` by keeping the rows of keys still
// shown (each changed only where its key did) and putting them in order:
// a row that stays is not removed and added again, so the focused one keeps
// focus without being announced anew at every refresh.
function renderKeys() {
  const list = $("keys");
  const old = [...list.children];
  const focusedAt = old.indexOf(document.activeElement);
  const kept = new Map(old.map((tr) => [tr.dataset.keyId, tr]));
  const rows = [];
  for (const key of state.keys.values()) {
    const tr = kept.get(key.id) || keyRow(key);
    kept.delete(key.id);
    fillKeyRow(tr, key);
    rows.push(tr);
  }
  for (const gone of kept.values()) gone.remove();
  if (!list.children.length) list.replaceChildren(...rows);
  rows.forEach((tr, i) => {
    if (list.children[i] !== tr) list.insertBefore(tr, list.children[i] || null);
  });
  // A list drawn anew keeps its stop: the row that last had focus, else
  // the chosen key's, else the first. Focus in the list stays there, on
  // the same key or, gone (deleted, off the page, searched away), on the
  // row now where it was; the page does not scroll to it.
  const stop =
    rows.find((tr) => tr.dataset.keyId === state.keyStop) ||
    (focusedAt >= 0 && rows[Math.min(focusedAt, rows.length - 1)]) ||
    rows.find((tr) => tr.hasAttribute("aria-current")) ||
    rows[0];
  if (stop) rove(stop);
  if (focusedAt >= 0 && document.activeElement !== stop) (stop || $("search")).focus({ preventScroll: true });
  const { index } = state.page;
  $("page-info").textContent = `page ${index + 1}${rows.length ? "" : " (no keys)"}`;
  // A pager button that had focus and goes disabled hands it on.
  const pager = document.activeElement;
  $("next-page").disabled = !state.page.next;
  $("first-page").disabled = index === 0;
  if (pager && pager.disabled && pager.closest(".pager")) {
    const other = [$("first-page"), $("next-page")].find((b) => !b.disabled);
    (other || stop || $("search")).focus({ preventScroll: true });
  }
}

function renderPlansOf(key, tr = $("keys").querySelector(`tr[data-key-id="${CSS.escape(key.id)}"]`)) {
  const cell = tr && tr.querySelector(".plans");
  const text = key.plans.length ? key.plans.map(planName).join(", ") : "none";
  if (cell && cell.textContent !== text) cell.textContent = text;
}

async function select(keyId) {
  const key = state.keys.get(keyId);
  if (!key) return;
  // A later click wins over this one.
  const generation = ++state.selectGeneration;
  let plans = key.plans;
  if (plans === null) {
    try {
      plans = (await all(["usageplans"], [["keyId", keyId]])).map((p) => p.id);
      key.plans = plans;
    } catch (e) {
      if (generation === state.selectGeneration) say(`Loading the key's plans failed: ${describe(e)}`, true);
      return;
    }
    if (generation !== state.selectGeneration) return;
  }
  state.selected = { key, planId: plans[0] || null };
  // No figures of the key chosen before while this one's load.
  state.usage = [];
  state.usageOf = null;
  renderUsage();
  for (const tr of $("keys").children) markChosen(tr, tr.dataset.keyId === keyId);
  renderSelected();
  await loadUsage().catch((e) => say(`Usage failed: ${describe(e)}`, true));
}

// The selected key's usage; a key deleted meanwhile (elsewhere: another
// operator, the CLI) is let go, not shown with a failure every refresh
// (`true`: it was).
async function loadSelectedUsage() {
  try {
    await loadUsage();
    return false;
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) throw e;
    if (!state.selected || state.selected.key.id !== e.keyId) return false;
    letGo(state.selected.key.id);
    return true;
  }
}

function renderSelected() {
  if (!state.selected) return;
  const { key, planId } = state.selected;
  $("no-key").hidden = true;
  $("key-detail").hidden = false;
  $("key-name").textContent = key.name ? shown(key.name) : "(no name)";
  $("key-id").textContent = key.id;
  $("key-enabled").textContent = key.enabled ? "yes" : "no";
  $("toggle-enabled").textContent = key.enabled ? "Disable key" : "Enable key";
  const select = $("key-plan");
  select.replaceChildren(...(key.plans || []).map((id) => el("option", planName(id), { value: id })));
  if (planId) select.value = planId;
  const plan = state.plans.find((p) => p.id === planId);
  $("key-quota").textContent = planId ? describeQuota(plan && plan.quota) : "the key is in no plan";
}

// The selected key's last 30 days. Only the latest call's answer is drawn,
// and only while its key and plan are still the ones chosen: an answer
// that was slow on the way never shows under another key.
async function loadUsage() {
  const { key, planId } = state.selected;
  const generation = ++state.usageGeneration;
  if (!planId) {
    state.usage = [];
    state.usageOf = null;
    renderUsage();
    return;
  }
  const start = utcDay(-(DAYS - 1));
  const end = utcDay(0);
  let answer;
  try {
    answer = await api("GET", ["usageplans", planId, "usage"], {
      query: [["keyId", key.id], ["startDate", start], ["endDate", end]],
    });
  } catch (e) {
    if (generation !== state.usageGeneration) return;
    e.keyId = key.id;
    throw e;
  }
  const current = state.selected;
  if (generation !== state.usageGeneration || !current || current.key.id !== key.id || current.planId !== planId) return;
  const values = (answer.values && answer.values[key.id]) || [];
  state.usage = Array.from({ length: DAYS }, (_, i) => {
    const [used, remaining] = values[i] || [0, 0];
    return { day: utcDay(i - (DAYS - 1)), used, remaining };
  });
  state.usageOf = { keyId: key.id, planId };
  renderUsage();
}

function renderUsage() {
  const today = state.usage[state.usage.length - 1];
  // A plan without a quota limits nothing: GetUsage's remaining 0 is no
  // count of what is left.
  const of = state.usageOf && state.plans.find((p) => p.id === state.usageOf.planId);
  const unlimited = of && !of.quota;
  $("today-used").textContent = today ? String(today.used) : "–";
  $("today-remaining").textContent = unlimited ? "no quota" : today ? String(today.remaining) : "–";
  drawChart($("chart"), state.usage);
}

// Inline SVG: a bar per day for what was used, a line for what remained.
function drawChart(svg, days) {
  const NS = "http://www.w3.org/2000/svg";
  const node = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    return n;
  };
  const [W, H, left, top, bottom] = [640, 220, 48, 10, 24];
  const plotH = H - top - bottom;
  const max = Math.max(1, ...days.map((d) => Math.max(d.used, d.remaining)));
  const step = (W - left - 8) / Math.max(days.length, 1);
  const y = (v) => top + plotH - (v / max) * plotH;
  const parts = [
    node("line", { x1: left, y1: top + plotH, x2: W - 8, y2: top + plotH, class: "axis" }),
    node("text", { x: left - 6, y: top + 10, class: "label", "text-anchor": "end" }, String(max)),
    node("text", { x: left - 6, y: top + plotH, class: "label", "text-anchor": "end" }, "0"),
  ];
  const points = [];
  days.forEach((d, i) => {
    const x = left + i * step;
    const h = top + plotH - y(d.used);
    const bar = node("rect", {
      x: x + 1,
      y: y(d.used),
      width: Math.max(step - 2, 1),
      height: h,
      class: "used",
      "data-day": d.day,
      "data-used": d.used,
      "data-remaining": d.remaining,
    });
    bar.append(node("title", {}, `${d.day}: used ${d.used}, remaining ${d.remaining}`));
    parts.push(bar);
    points.push(`${x + step / 2},${y(d.remaining)}`);
    if (i % 5 === 4 || i === days.length - 1) {
      parts.push(node("text", { x: x + step / 2, y: H - 6, class: "label", "text-anchor": "middle" }, d.day.slice(5)));
    }
  });
  if (points.length) parts.push(node("polyline", { points: points.join(" "), class: "remaining" }));
  svg.replaceChildren(...parts);
}

// ---- actions ---------------------------------------------------------------

function usagePatch(op, value) {
  const { key, planId } = state.selected;
  if (!planId) return Promise.reject(new Error("the key is in no usage plan"));
  return api("PATCH", ["usageplans", planId, "keys", key.id, "usage"], {
    body: { patchOperations: [{ op, path: "/remaining", value }] },
  });
}

async function setRemaining(event) {
  event.preventDefault();
  const value = event.target.remaining.value.trim();
  if (await act(`Set remaining to ${value}`, () => usagePatch("replace", value))) await loadUsage().catch(() => {});
}

async function addRemaining(event) {
  event.preventDefault();
  const value = event.target.delta.value.trim();
  if (await act(`Add ${value} to remaining`, () => usagePatch("add", value))) await loadUsage().catch(() => {});
}

async function toggleEnabled() {
  const { key } = state.selected;
  const enabled = !key.enabled;
  const answer = await act(`${enabled ? "Enable" : "Disable"} key ${key.id}`, () =>
    api("PATCH", ["apikeys", key.id], { body: { patchOperations: [{ op: "replace", path: "/enabled", value: String(enabled) }] } })
  );
  if (answer) {
    // A list asked for before the change would show the key as it was.
    state.keysGeneration += 1;
    key.enabled = answer.enabled;
    if (state.selected && state.selected.key.id === key.id) renderSelected();
    renderKeys();
  }
}

async function createKey(event) {
  event.preventDefault();
  const form = event.target;
  // One at a time: a second click or Enter while the first is on its way
  // made a second key (and added it to the plan) whose value was never shown.
  const submit = form.querySelector("button[type=submit]");
  if (submit.disabled) return;
  submit.disabled = true;
  try {
    await createKeyFrom(form);
  } finally {
    submit.disabled = false;
  }
}

async function createKeyFrom(form) {
  const name = form.name.value;
  const planId = form.plan.value;
  $("created").textContent = "";
  const key = await act(`Create key ${name}`, () => api("POST", ["apikeys"], { body: { name, enabled: true } }));
  if (!key) return;
  let inPlan = "";
  if (planId) {
    const added = await act(`Create key ${name} and add it to ${planName(planId)}`, () =>
      api("POST", ["usageplans", planId, "keys"], { body: { keyId: key.id, keyType: "API_KEY" } })
    );
    // The key exists either way: say so, with its value, rather than
    // leave the form as if nothing happened (a retry would make another).
    inPlan = added ? "" : ` (created, but in no plan: adding it to ${planName(planId)} failed, see above)`;
  }
  // Its value is shown here, not in the answer line; the API gives it again
  // (includeValue) unless the gateway keeps only digests of key values.
  $("created").textContent = `Created ${key.id}${inPlan}; its value: ${key.value || "(not shown)"}`;
  form.name.value = "";
  await refresh(true);
}

function exportCsv() {
  const { key, planId } = state.selected;
  if (!planId) {
    say(`${key.id} is in no plan: it has no usage to export`, true);
    return;
  }
  const of = state.usageOf;
  if (!of || of.keyId !== key.id || of.planId !== planId) {
    say(`The usage of ${key.id} is still loading: export it once it shows`, true);
    return;
  }
  const quote = (s) => `"${String(s).replace(/"/g, '""')}"`;
  const lines = ["date,usage_plan_id,key_id,used,remaining"];
  for (const d of state.usage) lines.push([d.day, quote(planId || ""), quote(key.id), d.used, d.remaining].join(","));
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  const link = el("a", undefined, { href: URL.createObjectURL(blob), download: `usage-${key.id}-${utcDay(0)}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  say(`Exported ${state.usage.length} days of ${key.id} as CSV`);
}

// ---- wiring ----------------------------------------------------------------

async function boot() {
  if (!window.isSecureContext || !window.crypto || !crypto.subtle) {
    $("insecure").hidden = false;
    return;
  }
  try {
    const settings = await (await fetch("settings.json", { cache: "no-store" })).json();
    if (settings.region) state.region = settings.region;
    // `add /remaining` is this gateway's extension, on with --admin-top-ups.
    $("add-remaining").hidden = settings.topUps !== true;
  } catch (_) {
    /* keep us-east-1 */
  }
  document.querySelector('#sign-in input[name="region"]').placeholder = state.region;
  $("sign-in").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("refresh").addEventListener("click", () => refresh());
  $("set-remaining").addEventListener("submit", setRemaining);
  $("add-remaining").addEventListener("submit", addRemaining);
  $("toggle-enabled").addEventListener("click", toggleEnabled);
  $("create-key").addEventListener("submit", createKey);
  $("export-csv").addEventListener("click", exportCsv);
  $("key-plan").addEventListener("change", (e) => {
    state.selected.planId = e.target.value;
    state.usage = [];
    state.usageOf = null;
    renderSelected();
    renderUsage();
    loadUsage().catch((err) => say(`Usage failed: ${describe(err)}`, true));
  });
  let searchTimer = null;
  const reloadKeys = () => {
    state.page = { positions: [null], index: 0, next: null };
    loadKeys().catch((e) => say(`Listing keys failed: ${describe(e)}`, true));
  };
  $("search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(reloadKeys, 250);
  });
  $("page-size").addEventListener("change", reloadKeys);
  $("next-page").addEventListener("click", () => {
    if (!state.page.next) return;
    state.page.positions[state.page.index + 1] = state.page.next;
    state.page.index += 1;
    loadKeys().catch((e) => say(`Listing keys failed: ${describe(e)}`, true));
  });
  $("first-page").addEventListener("click", reloadKeys);
  const saved = loadCredentials();
  if (saved) start(saved);
  else $("sign-in-view").hidden = false;
}

boot();

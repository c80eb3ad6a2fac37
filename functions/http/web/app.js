// Tierflow web UI: plain JavaScript over the JSON API (same origin, the session cookie carries the key).
"use strict";

const BUILTIN_TIERS = ["draft", "preview", "production"];
const WRITER_ROLES = ["artist", "admin"];

// Every event type the live stream carries (GET /api/events names each message by its type).
const EVENT_TYPES = ["scene.approved", "upscale.requested", "upscale.progress", "upscale.completed", "upscale.failed",
  "generation.requested", "generation.progress", "generation.completed", "generation.failed",
  "delivery.requested", "delivery.completed", "delivery.rejected"];
const STATUSES = ["pending", "generating", "generated", "approved", "failed"];

const state = {
  session: null,
  tiers: [],
  scenes: [],               // newest first, as the API lists them
  cards: new Map(),         // scene id -> {json, el}: unchanged scenes keep their element (a playing video is not reset)
  stream: null,             // the one EventSource of the page (GET /api/events)
  fetching: new Map(),      // scene id -> true while its fresh JSON is fetched, "again" when an event came meanwhile
  filters: { project: "", tier: "", status: "" },
  selected: new Set(),      // scene ids ticked in the delivery panel
  preflight: null,          // last preflight answer for the current selection
  estimates: new Map(),     // "scene id:tier" -> what that upscale would cost (GET …/upscale-estimate)
};

const $ = (id) => document.getElementById(id);

// ---- API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problemMessage(status, problem));
    this.status = status;
    this.problem = problem;
  }
}

// A readable message from an RFC 9457 problem: its detail, plus validation errors when given.
function problemMessage(status, problem) {
  let text = (problem && (problem.detail || problem.title)) || `Request failed (HTTP ${status})`;
  if (problem && typeof problem.detail !== "string" && problem.detail) text = JSON.stringify(problem.detail);
  const errors = (problem && problem.errors) || [];
  // Validation errors the detail does not already spell out.
  const lines = errors.map((e) => {
    if (typeof e === "string") return e;
    const where = Array.isArray(e.loc) ? e.loc.filter((p) => p !== "body").join(".") : e.loc || e.field || "";
    const what = e.msg || e.message || JSON.stringify(e);
    return text.includes(what) ? null : where ? `${where}: ${what}` : what;
  }).filter(Boolean);
  return lines.length ? `${text} (${lines.join("; ")})` : text;
}

async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new ApiError(0, { detail: `The server cannot be reached (${err.message}).` });
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (!response.ok) {
    // An expired or revoked key mid-session: back to the sign-in form.
    if (response.status === 401 && path !== "/api/session") showSignIn("Your session has ended: sign in again.");
    throw new ApiError(response.status, data);
  }
  return data;
}

// ---- small DOM helpers -----------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key.startsWith("data")) node.setAttribute(key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase()), value);
    else if (key in node && typeof node[key] !== "object") node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
}

function showMessage(target, message) {
  target.textContent = message || "";
  target.hidden = !message;
}

function flash(message) {
  showMessage($("flash-text"), message);
  $("flash").hidden = !message;
}

function canWrite() {
  return state.session && WRITER_ROLES.includes(state.session.role);
}

function tierClass(name) {
  return BUILTIN_TIERS.includes(name) ? `tier-${name}` : "tier-custom";
}

function tierBadge(name, label) {
  return el("span", { class: `badge ${tierClass(name)}`, dataTestid: "tier-badge", text: label || name });
}

function percent(value) {
  return `${Math.round(Number(value) || 0)}%`;
}

// ---- session ---------------------------------------------------------------------------------

async function start() {
  try {
    state.session = await api("GET", "/api/session");
  } catch (err) {
    if (err.status === 401) return showSignIn();
    return flash(err.message);
  }
  await showApp();
}

function showSignIn(message) {
  state.session = null;
  closeStream();
  $("app").hidden = true;
  $("session-info").hidden = true;
  $("signin").hidden = false;
  showMessage($("signin-error"), message);
  $("api-key").focus();
}

async function signIn(event) {
  event.preventDefault();
  showMessage($("signin-error"), "");
  try {
    state.session = await api("POST", "/api/session", { api_key: $("api-key").value.trim() });
  } catch (err) {
    return showMessage($("signin-error"), err.message);
  }
  $("api-key").value = "";
  await showApp();
}

async function signOut(event) {
  event.preventDefault();
  try { await api("DELETE", "/api/session"); } catch (err) { flash(err.message); }
  state.scenes = [];
  state.cards.clear();
  state.selected.clear();
  state.preflight = null;
  $("cards").replaceChildren();
  $("delivery-outcome").hidden = true;
  renderDeliveryWarning();
  showSignIn();
}

async function showApp() {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("session-info").hidden = false;
  $("session-name").textContent = state.session.name;
  $("session-role").textContent = state.session.role;
  // CSS hides every .writer-only control for roles that may not write.
  document.body.dataset.role = state.session.role;
  document.body.classList.toggle("read-only", !canWrite());
  state.cards.clear(); // cards drawn for another role must be redrawn with this role's buttons
  await loadTiers(); // before the scenes: the upscale choices come from the tiers
  await loadScenes();
  openStream();
  loadUsage();
  loadDeliveries();
}

// ---- tiers and the job form ------------------------------------------------------------------

async function loadTiers() {
  try {
    state.tiers = await api("GET", "/api/resolution-tiers");
  } catch (err) {
    return flash(err.message);
  }
  const select = $("job-tier");
  select.replaceChildren(...state.tiers.map((t) =>
    el("option", { value: t.name, selected: t.is_default, text: `${t.label} (${t.width}×${t.height})` })));
  $("filter-tier").replaceChildren(el("option", { value: "", text: "All tiers" }),
    ...state.tiers.map((t) => el("option", { value: t.name, text: t.label })));
  $("filter-tier").value = state.filters.tier;
}

function tierRank(name) {
  const tier = state.tiers.find((t) => t.name === name);
  return tier ? tier.sort_order : null;
}

function addSegment() {
  const fieldset = $("segment-template").content.firstElementChild.cloneNode(true);
  fieldset.querySelector(".remove-segment").addEventListener("click", () => {
    fieldset.remove();
    numberSegments();
  });
  $("segments").append(fieldset);
  numberSegments();
}

function numberSegments() {
  const all = [...$("segments").children];
  all.forEach((fieldset, i) => {
    fieldset.querySelector("legend").textContent = `Segment ${i + 1}`;
    fieldset.querySelector(".remove-segment").hidden = all.length === 1; // a scene needs one segment
  });
}

async function submitJob(event) {
  event.preventDefault();
  const form = event.target;
  showMessage($("job-error"), "");
  showMessage($("job-ok"), "");
  const segments = [...$("segments").children].map((fieldset) => {
    const segment = { prompt: fieldset.querySelector("[name=prompt]").value.trim() };
    const seed = fieldset.querySelector("[name=seed]").value.trim();
    if (seed !== "") segment.seed = Number(seed);
    return segment;
  });
  const job = {
    project: form.project.value.trim(),
    scene: form.scene.value.trim(),
    aspect: form.aspect.value.trim(),
    tier: form.tier.value || undefined,
    segments,
  };
  const button = form.querySelector("[type=submit]");
  button.disabled = true;
  try {
    const scene = await api("POST", "/api/jobs", job);
    showMessage($("job-ok"), `Scene #${scene.scene_id} submitted at ${scene.tier_label || scene.tier} (${scene.width}×${scene.height}).`);
    if (!$("delivery-project").value) $("delivery-project").value = scene.project;
    await loadScenes();
  } catch (err) {
    showMessage($("job-error"), err.message);
  } finally {
    button.disabled = false;
  }
}

// ---- scenes ----------------------------------------------------------------------------------

let refreshTimer = null;

// Several streams can end at once: one list refresh for all of them.
function scheduleRefresh(delay = 300) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(loadScenes, delay);
}

async function loadScenes() {
  clearTimeout(refreshTimer);
  if (!state.session) return;
  let scenes;
  try {
    scenes = await api("GET", "/api/scenes?limit=100");
  } catch (err) {
    return flash(err.message);
  }
  state.scenes = scenes;
  renderFilters();
  renderScenes();
  renderDeliveryScenes();
  if (state.selected.size) preflight(); // a ticked scene may have finished or been upscaled meanwhile
}

// ---- filters ---------------------------------------------------------------------------------

function renderFilters() {
  const projects = [...new Set(state.scenes.map((s) => s.project))].sort();
  if (state.filters.project && !projects.includes(state.filters.project)) projects.unshift(state.filters.project);
  $("filter-project").replaceChildren(el("option", { value: "", text: "All projects" }),
    ...projects.map((p) => el("option", { value: p, text: p })));
  $("filter-project").value = state.filters.project;
  $("filter-status").value = state.filters.status;
}

function shown(scene) {
  const f = state.filters;
  return (!f.project || scene.project === f.project) && (!f.tier || scene.tier === f.tier)
    && (!f.status || scene.status === f.status);
}

function setFilter(name, value) {
  state.filters[name] = value;
  renderScenes();
  if (name === "project") { loadUsage(); loadDeliveries(); }
}

function renderScenes() {
  const cards = state.scenes.filter(shown).map((scene) => {
    const json = JSON.stringify(scene);
    const cached = state.cards.get(scene.scene_id);
    if (cached && cached.json === json) return cached.el;
    const card = sceneCard(scene);
    state.cards.set(scene.scene_id, { json, el: card });
    return card;
  });
  $("cards").replaceChildren(...cards);
  $("no-scenes").hidden = cards.length > 0;
  $("no-scenes").textContent = state.scenes.length ? "No scene matches the filters." : "No scenes yet: submit one with the form.";
}

function updateScene(scene) {
  const index = state.scenes.findIndex((s) => s.scene_id === scene.scene_id);
  const before = index === -1 ? null : state.scenes[index].status;
  if (index === -1) state.scenes.unshift(scene);
  else state.scenes[index] = { ...state.scenes[index], ...scene };
  renderScenes();
  if (before !== scene.status) renderDeliveryScenes(); // its list shows each scene's status
}

// Live progress: one EventSource for the whole page, whatever number of scenes are generating (a
// browser allows six connections per origin). Each event names the scenes it is about; their
// fresh JSON is fetched, one request per scene at a time. EventSource reconnects by itself and
// sends Last-Event-ID, so nothing is missed across a reconnect.
function openStream() {
  if (state.stream) return;
  const source = new EventSource("/api/events");
  state.stream = source;
  const onEvent = (message) => {
    const event = JSON.parse(message.data);
    const data = event.data || {};
    if (event.type.startsWith("delivery.")) return loadDeliveries();
    const ids = [data.scene_id, data.source_scene_id, data.target_scene_id].filter(Number.isInteger);
    for (const id of new Set(ids)) refreshScene(id);
    if (["generation.completed", "generation.failed", "scene.approved", "upscale.completed"].includes(event.type)) {
      scheduleUsage();
    }
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
  // A scene's status changed (a handler applied an event) or a scene was created.
  source.addEventListener("scene", (message) => refreshScene(JSON.parse(message.data).scene_id));
}

function closeStream() {
  if (state.stream) state.stream.close();
  state.stream = null;
}

async function refreshScene(sceneId) {
  if (state.fetching.has(sceneId)) return state.fetching.set(sceneId, "again");
  if (!state.scenes.some((s) => s.scene_id === sceneId)) return scheduleRefresh(); // a new scene: the list
  state.fetching.set(sceneId, true);
  try {
    const before = state.scenes.find((s) => s.scene_id === sceneId);
    const scene = await api("GET", `/api/scenes/${sceneId}`);
    updateScene(scene);
    // Lineage, upscale targets and the delivery list follow a change of status.
    if (before && before.status !== scene.status) scheduleRefresh(1000);
  } catch (err) {
    if (err.status !== 404) flash(err.message);
  } finally {
    const again = state.fetching.get(sceneId) === "again";
    state.fetching.delete(sceneId);
    if (again) setTimeout(() => refreshScene(sceneId), 250);
  }
}

function sceneCard(scene) {
  const segment0 = (scene.segments || [])[0];
  const urls = segment0 && segment0.urls;
  const progress = Number(scene.progress) || 0;
  const card = el("article", {
    class: `card status-${scene.status}`,
    dataTestid: "scene-card",
    dataSceneId: scene.scene_id,
    dataTier: scene.tier,
    dataStatus: scene.status,
  });

  card.append(
    el("div", { class: "card-head" },
      el("div", {},
        el("h3", { text: `#${scene.scene_id} ${scene.name}` }),
        el("div", { class: "muted", text: scene.project })),
      tierBadge(scene.tier, scene.tier_label)),
    el("div", { class: "facts" },
      el("span", { dataTestid: "size", text: `${scene.width}×${scene.height}` }),
      el("span", { class: "muted", text: scene.aspect }),
      el("span", { class: `status ${scene.status}`, dataTestid: "status", text: scene.status })),
    el("div", { class: "progress-row" },
      el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": progress },
        el("div", { class: "fill", style: `width: ${Math.min(100, progress)}%` })),
      el("span", { class: "pct", dataTestid: "progress", text: percent(progress) })),
  );

  if (urls) {
    // preload="none": the poster image is what shows; the video loads when someone plays it.
    card.append(el("div", { class: "media" },
      el("video", { controls: true, preload: "none", poster: urls.poster, src: urls.video, dataTestid: "video" }),
      el("div", { class: "media-links" },
        el("a", { href: urls.poster, target: "_blank", dataTestid: "poster", text: "Poster" }),
        el("a", { href: urls.video, target: "_blank", text: "Video file" }))));
  } else {
    card.append(el("div", { class: "media placeholder", text: scene.status === "failed" ? "Generation failed" : "Rendering…" }));
  }

  const errors = (scene.segments || []).map((s) => s.job && s.job.error).filter(Boolean);
  if (scene.status === "failed" && errors.length) card.append(el("p", { class: "error", text: errors.join("; ") }));

  const lineage = [];
  if (scene.upscaled_from_scene_id) lineage.push(["upscaled from", scene.upscaled_from_scene_id, ""]);
  for (const target of scene.upscale_targets || []) lineage.push(["upscaled to", target.scene_id, ` ${target.tier_label || target.tier}`]);
  if (lineage.length) {
    card.append(el("p", { class: "lineage", dataTestid: "lineage" }, lineage.flatMap(([what, id, tier], i) => [
      i ? " · " : "", `${what} `,
      el("a", { href: `#scene-${id}`, dataTestid: "lineage-link", onclick: (e) => { e.preventDefault(); goToScene(id); },
                text: `#${id}` }), tier])));
  }

  card.append(sceneActions(scene, segment0));
  return card;
}

function goToScene(sceneId) {
  const filtered = !state.scenes.filter(shown).some((s) => s.scene_id === sceneId);
  if (filtered) { // a linked scene hidden by the filters: clear them
    state.filters = { project: "", tier: "", status: "" };
    renderFilters();
    renderScenes();
  }
  const target = document.querySelector(`[data-testid=scene-card][data-scene-id="${sceneId}"]`);
  if (target) {
    target.scrollIntoView({ behavior: "smooth", block: "center" });
    target.classList.add("highlight");
    setTimeout(() => target.classList.remove("highlight"), 1500);
  }
}

function sceneActions(scene, segment0) {
  const actions = el("div", { class: "actions" });
  if (canWrite() && scene.status === "generated") {
    actions.append(el("button", { type: "button", dataTestid: "approve", text: "Approve", onclick: (e) => approve(scene, e.target) }));
  }
  if (canWrite() && scene.status === "failed") {
    actions.append(el("button", { type: "button", dataTestid: "retry", text: "Retry failed segments",
                                  onclick: (e) => retry(scene, e.target) }));
  }
  // Tiers above this one that it has not been upscaled to yet (repeating would return the same scene).
  const rank = tierRank(scene.tier);
  const done = (scene.upscale_targets || []).map((t) => t.tier);
  const higher = state.tiers.filter((t) => rank !== null && t.sort_order > rank && !done.includes(t.name));
  // Only an approved scene is upscaled: re-generating what nobody approved is the cost drafting saves.
  if (canWrite() && scene.status === "approved" && higher.length) {
    const select = el("select", { dataTestid: "upscale-tier", "aria-label": "Upscale to",
                                  onchange: () => loadEstimate(scene, select.value, true) },
      higher.map((t) => el("option", { value: t.name, selected: t.name === "production", text: t.label })));
    // The one click the workflow is about: approved drafts and previews go to Production.
    const prominent = ["draft", "preview"].includes(scene.tier) && higher.some((t) => t.name === "production");
    const button = el("button", { type: "button", class: prominent ? "primary" : "", dataTestid: "upscale",
                                  onclick: (e) => upscale(scene, select.value, e.currentTarget) });
    actions.append(el("span", { class: "upscale" }, button, select));
    showEstimate(button, scene, select.value);
    loadEstimate(scene, select.value, false);
  }
  if (scene.upscaled_from_scene_id && segment0 && segment0.urls && segment0.urls.comparison) {
    actions.append(el("button", { type: "button", class: "link", dataTestid: "compare", text: "Compare",
                                  onclick: () => openCompare(scene) }));
  }
  return actions;
}

async function approve(scene, button) {
  button.disabled = true;
  try {
    await api("POST", `/api/scenes/${scene.scene_id}/approve`);
    // Approval is applied by an event handler: poll briefly until the scene shows it.
    for (let i = 0; i < 40; i++) {
      const fresh = await api("GET", `/api/scenes/${scene.scene_id}`);
      if (fresh.status !== scene.status) break;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  } catch (err) {
    flash(err.message);
    button.disabled = false;
  }
  await loadScenes();
}

async function retry(scene, button) {
  button.disabled = true;
  try {
    const result = await api("POST", `/api/scenes/${scene.scene_id}/retry`);
    flash("");
    updateScene({ ...scene, status: "generating" });
    refreshScene(scene.scene_id);
    return result;
  } catch (err) {
    flash(err.message);
    button.disabled = false;
  }
}

// ---- upscale estimates -------------------------------------------------------------------------

function approxSeconds(value) {
  if (value >= 60) return `${(value / 60).toFixed(1)} min`;
  return value >= 10 ? `${Math.round(value)} s` : `${value.toFixed(1)} s`;
}

// "Upscale to Production · ~42 s GPU": the device time the upscale should hold, once known; a
// rough one (the tiers' speed factors, not a fit to measured jobs) says "est.".
function showEstimate(button, scene, tierName) {
  const tier = state.tiers.find((t) => t.name === tierName);
  const estimate = state.estimates.get(`${scene.scene_id}:${tierName}`);
  let text = `Upscale to ${tier ? tier.label : tierName}`;
  button.title = "";
  if (estimate && estimate.estimated_held_seconds !== null && estimate.estimated_held_seconds !== undefined) {
    const device = (estimate.basis.device || "").includes("cuda") ? "GPU" : (estimate.basis.device || "device").toUpperCase();
    const rough = estimate.basis.method === "fitted" ? "" : " (rough est.)";
    text += ` · ~${approxSeconds(estimate.estimated_held_seconds)} ${device}${rough}`;
    button.title = estimate.summary;
  } else if (estimate && estimate.summary) {
    button.title = estimate.summary; // no estimate: the reason
  }
  button.textContent = text;
  button.dataset.estimate = estimate && estimate.basis ? estimate.basis.method || "none" : "";
}

// Fetch what upscaling the scene to the tier would cost (queues nothing), then label its button;
// `fresh` asks again (the selector changed), otherwise a known answer is kept.
async function loadEstimate(scene, tierName, fresh) {
  const key = `${scene.scene_id}:${tierName}`;
  const card = () => document.querySelector(`[data-testid=scene-card][data-scene-id="${scene.scene_id}"]`);
  const relabel = () => {
    const button = card() && card().querySelector('[data-testid="upscale"]');
    const select = card() && card().querySelector('[data-testid="upscale-tier"]');
    if (button && select && select.value === tierName) showEstimate(button, scene, tierName);
  };
  if (!fresh && state.estimates.has(key)) return relabel();
  if (!fresh) state.estimates.set(key, null); // asked once while cards re-render
  relabel();
  try {
    state.estimates.set(key, await api("GET", `/api/scenes/${scene.scene_id}/upscale-estimate?to=${encodeURIComponent(tierName)}`));
  } catch (err) {
    state.estimates.set(key, { summary: err.message }); // the upscale itself would say the same
  }
  relabel();
}

async function upscale(scene, targetTier, button) {
  button.disabled = true;
  try {
    const result = await api("POST", `/api/scenes/${scene.scene_id}/upscale`, { target_tier: targetTier });
    flash("");
    await loadScenes();
    const card = document.querySelector(`[data-testid=scene-card][data-scene-id="${result.scene_id}"]`);
    if (card) card.scrollIntoView({ behavior: "smooth", block: "nearest" });
  } catch (err) {
    flash(err.message);
    button.disabled = false;
  }
}

// ---- compare view ----------------------------------------------------------------------------

async function openCompare(scene) {
  let source = state.scenes.find((s) => s.scene_id === scene.upscaled_from_scene_id);
  if (!source) {
    try { source = await api("GET", `/api/scenes/${scene.upscaled_from_scene_id}`); } catch (err) { return flash(err.message); }
  }
  const sourceLabel = source.tier_label || source.tier;
  const targetLabel = scene.tier_label || scene.tier;
  $("compare-title").textContent = `#${scene.scene_id} ${targetLabel} compared with #${source.scene_id} ${sourceLabel}`;
  const body = (scene.segments || []).filter((s) => s.urls && s.urls.comparison).map((s) => {
    const flagged = s.similarity_flagged === true;
    const score = (value, digits) => (value === null || value === undefined ? "—" : Number(value).toFixed(digits));
    return el("figure", { class: `comparison${flagged ? " flagged" : ""}`, dataTestid: "comparison" },
      el("div", { class: "comparison-labels" },
        el("span", {}, "Source: ", tierBadge(source.tier, sourceLabel)),
        el("span", {}, "Upscaled: ", tierBadge(scene.tier, targetLabel))),
      el("img", { src: s.urls.comparison, alt: `Segment ${s.position + 1}: ${sourceLabel} beside ${targetLabel}` }),
      el("figcaption", {},
        el("span", { text: `Segment ${s.position + 1}` }),
        el("span", { dataTestid: "ssim", text: `SSIM ${score(s.ssim, 3)}` }),
        el("span", { dataTestid: "psnr", text: `PSNR ${score(s.psnr, 1)} dB` }),
        flagged ? el("strong", { class: "flag", dataTestid: "similarity-flagged",
                                 text: `Low similarity: the ${targetLabel} render differs noticeably from the ${sourceLabel}` }) : null));
  });
  const segment = (scene.segments || [])[0];
  const sourceSegment = (source.segments || [])[0];
  const slider = segment && segment.urls && sourceSegment && sourceSegment.urls ? compareSlider(
    sourceSegment.urls.poster, segment.urls.poster, sourceLabel, targetLabel) : null;
  $("compare-body").replaceChildren(...[slider, ...body].filter(Boolean));
  $("compare").showModal();
}

// The first frames of the source and the upscale, one over the other; the slider moves the edge.
function compareSlider(sourceUrl, targetUrl, sourceLabel, targetLabel) {
  const top = el("img", { class: "slider-top", src: sourceUrl, alt: `${sourceLabel} frame`, dataTestid: "slider-source" });
  const range = el("input", { type: "range", min: 0, max: 100, value: 50, dataTestid: "compare-slider",
                              "aria-label": `${sourceLabel} ← → ${targetLabel}` });
  const edge = el("div", { class: "slider-edge" });
  const place = () => {
    top.style.clipPath = `inset(0 ${100 - range.value}% 0 0)`;
    edge.style.left = `${range.value}%`;
  };
  range.addEventListener("input", place);
  place();
  return el("figure", { class: "slider", dataTestid: "compare-slider-view" },
    el("div", { class: "slider-frames" },
      el("img", { src: targetUrl, alt: `${targetLabel} frame`, dataTestid: "slider-target" }), top, edge),
    el("figcaption", {}, el("span", { text: `◀ ${sourceLabel}` }), range, el("span", { text: `${targetLabel} ▶` })));
}

// ---- usage -----------------------------------------------------------------------------------

let usageTimer = null;

function scheduleUsage() {
  clearTimeout(usageTimer);
  usageTimer = setTimeout(loadUsage, 2000);
}

async function loadUsage() {
  if (!state.session) return;
  let usage;
  try {
    usage = await api("GET", "/api/usage");
  } catch (err) {
    return showMessage($("usage-error"), err.message);
  }
  showMessage($("usage-error"), "");
  const project = state.filters.project;
  const rows = (usage.rows || []).filter((r) => !project || r.project === project);
  const byTier = new Map();
  for (const row of rows) {
    const tier = byTier.get(row.tier) || { render: 0, held: 0, jobs: 0 };
    tier.render += Number(row.render_seconds ?? row.device_seconds) || 0;
    tier.held += Number(row.held_seconds) || 0;
    tier.jobs += Number(row.jobs) || 0;
    byTier.set(row.tier, tier);
  }
  const most = Math.max(1e-9, ...[...byTier.values()].map((t) => Math.max(t.render, t.held)));
  const ordered = state.tiers.map((t) => t.name).filter((n) => byTier.has(n))
    .concat([...byTier.keys()].filter((n) => !state.tiers.some((t) => t.name === n)));
  const label = (name) => (state.tiers.find((t) => t.name === name) || {}).label || name;
  $("usage-chart").replaceChildren(...(ordered.length ? ordered.map((name) => {
    const t = byTier.get(name);
    return el("div", { class: "usage-row", dataTestid: "usage-tier", dataTier: name },
      tierBadge(name, label(name)),
      el("div", { class: "usage-bars" },
        el("div", { class: "usage-bar held", style: `width: ${(100 * t.held) / most}%`, title: "held seconds" }),
        el("div", { class: "usage-bar render", style: `width: ${(100 * t.render) / most}%`, title: "render seconds" })),
      el("span", { class: "usage-figure", dataTestid: "usage-seconds",
                   text: `${t.held.toFixed(1)} s held · ${t.render.toFixed(1)} s render · ${t.jobs} jobs` }));
  }) : [el("p", { class: "muted", text: "No GPU time recorded yet." })]));
  const projects = Object.entries(usage.projects || {}).filter(([name]) => !project || name === project);
  $("usage-saving").replaceChildren(...projects.map(([name, p]) => el("li", { dataTestid: "usage-saving" },
    el("strong", { text: name }), ": ",
    p.saving === null || p.saving === undefined
      ? (p.saving_reason ? `no saving: ${p.saving_reason}` : "saving not measured yet")
      : `${Math.round(100 * p.saving)}% less GPU time than iterating at ${p.final_tier || "the final tier"}`)));
}

// ---- deliveries list -------------------------------------------------------------------------

async function loadDeliveries() {
  if (!state.session) return;
  const project = state.filters.project;
  let deliveries;
  try {
    deliveries = await api("GET", `/api/deliveries?limit=10${project ? `&project=${encodeURIComponent(project)}` : ""}`);
  } catch (err) {
    return showMessage($("deliveries-error"), err.message);
  }
  showMessage($("deliveries-error"), "");
  $("deliveries").replaceChildren(...(deliveries.length ? deliveries.map((d) =>
    el("li", { class: `delivery ${d.status}`, dataTestid: "delivery-row", dataStatus: d.status },
      el("strong", { text: `#${d.delivery_id}` }), ` ${d.project} · `,
      el("span", { class: `status ${d.status}`, text: d.status }),
      ` · scenes ${(d.scene_ids || []).map((id) => "#" + id).join(", ")}`))
    : [el("li", { class: "muted", text: "No deliveries yet." })]));
}

// ---- delivery --------------------------------------------------------------------------------

function deliveryProject() {
  return $("delivery-project").value.trim();
}

function renderDeliveryScenes() {
  const projects = [...new Set(state.scenes.map((s) => s.project))];
  $("projects").replaceChildren(...projects.map((p) => el("option", { value: p })));
  if (!deliveryProject() && projects.length) $("delivery-project").value = projects[0];
  const project = deliveryProject();
  const scenes = state.scenes.filter((s) => s.project === project);
  for (const id of [...state.selected]) if (!scenes.some((s) => s.scene_id === id)) state.selected.delete(id);
  $("delivery-scenes").replaceChildren(...(scenes.length ? scenes.map((scene) =>
    el("label", { class: "scene-check", dataTestid: "delivery-scene", dataSceneId: scene.scene_id, dataTier: scene.tier },
      el("input", { type: "checkbox", value: scene.scene_id, checked: state.selected.has(scene.scene_id),
                    onchange: (e) => toggleDeliveryScene(scene.scene_id, e.target.checked) }),
      el("span", { text: `#${scene.scene_id} ${scene.name}` }),
      tierBadge(scene.tier, scene.tier_label),
      el("span", { class: "muted", text: `${scene.width}×${scene.height} · ${scene.status}` })))
    : [el("p", { class: "muted", text: project ? `No scenes in project "${project}".` : "Type a project name." })]));
}

function toggleDeliveryScene(sceneId, checked) {
  if (checked) state.selected.add(sceneId); else state.selected.delete(sceneId);
  $("delivery-confirm").checked = false;
  showMessage($("delivery-error"), "");
  preflight(); // the warning shows as soon as a non-deliverable scene is ticked
}

function selectedScenes() {
  return state.scenes.filter((s) => state.selected.has(s.scene_id));
}

let preflightSeq = 0;

async function preflight() {
  const ids = [...state.selected];
  const seq = ++preflightSeq; // only the answer for the latest selection counts
  state.preflight = null;
  if (!ids.length) return renderDeliveryWarning();
  renderDeliveryWarning(); // the tier alone is enough to warn while the check runs
  if (!canWrite()) return; // a POST: viewers see the tier-based warning only
  try {
    const answer = await api("POST", "/api/deliveries/preflight", { project: deliveryProject(), scene_ids: ids });
    if (seq !== preflightSeq) return;
    state.preflight = answer;
  } catch (err) {
    if (seq === preflightSeq) showMessage($("delivery-error"), err.message);
  }
  renderDeliveryWarning();
}

// Messages explaining why the current selection would be refused (empty when deliverable).
function deliveryProblems() {
  if (state.preflight && !state.preflight.deliverable) {
    const messages = (state.preflight.reasons || []).map((r) => r.message);
    return messages.length ? messages : [state.preflight.summary || "Delivery would be refused."];
  }
  if (state.preflight) return [];
  return selectedScenes().filter((s) => !s.tier_deliverable)
    .map((s) => `Scene ${s.scene_id} is ${s.tier_label || s.tier} (${s.width}×${s.height}): upscale it to Production before delivery.`);
}

function renderDeliveryWarning() {
  const problems = deliveryProblems();
  $("delivery-reasons").replaceChildren(...problems.map((m) => el("li", { dataTestid: "delivery-reason", text: m })));
  $("delivery-warning").hidden = problems.length === 0;
  $("delivery-submit").disabled = !state.selected.size || (problems.length > 0 && !$("delivery-confirm").checked);
}

async function deliver() {
  const ids = [...state.selected];
  if (!ids.length) return showMessage($("delivery-error"), "Tick at least one scene to deliver.");
  if (deliveryProblems().length && !$("delivery-confirm").checked) {
    return showMessage($("delivery-error"), "These scenes are not deliverable: confirm to send the request anyway.");
  }
  showMessage($("delivery-error"), "");
  $("delivery-submit").disabled = true;
  const outcome = $("delivery-outcome");
  try {
    let delivery = await api("POST", "/api/deliveries", { project: deliveryProject(), scene_ids: ids });
    renderOutcome(delivery);
    // Checking files takes a moment: poll until the delivery is decided.
    while (!["completed", "rejected"].includes(delivery.status)) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      delivery = await api("GET", `/api/deliveries/${delivery.delivery_id}`);
      renderOutcome(delivery);
    }
  } catch (err) {
    outcome.hidden = true;
    showMessage($("delivery-error"), err.message);
  } finally {
    renderDeliveryWarning();
    loadDeliveries();
  }
}

function renderOutcome(delivery) {
  const outcome = $("delivery-outcome");
  const done = { completed: "Delivered", rejected: "Refused" }[delivery.status] || "Checking…";
  outcome.className = `outcome ${delivery.status}`;
  outcome.dataset.status = delivery.status;
  outcome.replaceChildren(...[
    el("strong", { dataTestid: "delivery-status", text: `Delivery #${delivery.delivery_id}: ${done}` }),
    el("div", { class: "muted", text: `scenes ${(delivery.scene_ids || []).map((id) => "#" + id).join(", ")}` }),
    (delivery.reasons || []).length
      ? el("ul", {}, delivery.reasons.map((r) => el("li", { dataTestid: "delivery-outcome-reason", text: r.message })))
      : null,
    delivery.manifest_url
      ? el("a", { href: delivery.manifest_url, target: "_blank", text: "Manifest" })
      : delivery.manifest_key ? el("div", { class: "muted", text: `manifest: ${delivery.manifest_key}` }) : null,
  ].filter(Boolean));
  outcome.hidden = false;
}

// ---- wiring ----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("flash-close").addEventListener("click", () => flash(""));
  $("job-form").addEventListener("submit", submitJob);
  $("add-segment").addEventListener("click", addSegment);
  $("refresh").addEventListener("click", loadScenes);
  $("delivery-project").addEventListener("change", () => {
    state.selected.clear();
    renderDeliveryScenes();
    preflight();
  });
  $("delivery-check").addEventListener("click", () => {
    if (!state.selected.size) return showMessage($("delivery-error"), "Tick at least one scene to check.");
    showMessage($("delivery-error"), "");
    preflight();
  });
  $("delivery-confirm").addEventListener("change", renderDeliveryWarning);
  $("delivery-submit").addEventListener("click", deliver);
  $("compare-close").addEventListener("click", () => $("compare").close());
  for (const name of ["project", "tier", "status"]) {
    $(`filter-${name}`).addEventListener("change", (e) => setFilter(name, e.target.value));
  }
  $("filter-status").replaceChildren(el("option", { value: "", text: "All statuses" }),
    ...STATUSES.map((s) => el("option", { value: s, text: s })));
  addSegment();
  renderDeliveryWarning();
  start();
});

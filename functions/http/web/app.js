// Tierflow web UI: plain JavaScript over the JSON API (same origin, the session cookie carries the key).
"use strict";

const BUILTIN_TIERS = ["draft", "preview", "production"];
const ACTIVE = ["pending", "generating"];
const WRITER_ROLES = ["artist", "admin"];

const state = {
  session: null,
  tiers: [],
  scenes: [],               // newest first, as the API lists them
  cards: new Map(),         // scene id -> {json, el}: unchanged scenes keep their element (a playing video is not reset)
  streams: new Map(),       // scene id -> EventSource
  streamOpened: new Map(),  // scene id -> time the last stream opened (guards against reconnect loops)
  selected: new Set(),      // scene ids ticked in the delivery panel
  preflight: null,          // last preflight answer for the current selection
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
  closeStreams();
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
  renderScenes();
  renderDeliveryScenes();
  for (const scene of scenes) if (ACTIVE.includes(scene.status)) follow(scene.scene_id);
  if (state.selected.size) preflight(); // a ticked scene may have finished or been upscaled meanwhile
}

function renderScenes() {
  const cards = state.scenes.map((scene) => {
    const json = JSON.stringify(scene);
    const cached = state.cards.get(scene.scene_id);
    if (cached && cached.json === json) return cached.el;
    const card = sceneCard(scene);
    state.cards.set(scene.scene_id, { json, el: card });
    return card;
  });
  $("cards").replaceChildren(...cards);
  $("no-scenes").hidden = cards.length > 0;
}

function updateScene(scene) {
  const index = state.scenes.findIndex((s) => s.scene_id === scene.scene_id);
  const before = index === -1 ? null : state.scenes[index].status;
  if (index === -1) state.scenes.unshift(scene);
  else state.scenes[index] = { ...state.scenes[index], ...scene };
  renderScenes();
  if (before !== scene.status) renderDeliveryScenes(); // its list shows each scene's status
}

// Live progress: one EventSource per pending/generating scene; each `scene` message is the scene JSON.
function follow(sceneId) {
  if (state.streams.has(sceneId)) return;
  const last = state.streamOpened.get(sceneId) || 0;
  if (Date.now() - last < 2000) return scheduleRefresh(2000); // a stream that keeps failing: poll slowly instead
  state.streamOpened.set(sceneId, Date.now());
  const source = new EventSource(`/api/scenes/${sceneId}/events`);
  state.streams.set(sceneId, source);
  source.addEventListener("scene", (event) => {
    const scene = JSON.parse(event.data);
    updateScene(scene);
    if (!ACTIVE.includes(scene.status)) endStream(sceneId);
  });
  // The server closes the stream when the scene is done; EventSource would reconnect, so stop it here.
  source.addEventListener("error", () => endStream(sceneId));
}

function endStream(sceneId) {
  const source = state.streams.get(sceneId);
  if (!source) return;
  source.close();
  state.streams.delete(sceneId);
  scheduleRefresh(); // lineage, upscale targets and the delivery list may have changed
}

function closeStreams() {
  for (const source of state.streams.values()) source.close();
  state.streams.clear();
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
  if (scene.upscaled_from_scene_id) lineage.push(`upscaled from #${scene.upscaled_from_scene_id}`);
  for (const target of scene.upscale_targets || []) lineage.push(`upscaled to #${target.scene_id} ${target.tier_label || target.tier}`);
  if (lineage.length) card.append(el("p", { class: "lineage", dataTestid: "lineage", text: lineage.join(" · ") }));

  card.append(sceneActions(scene, segment0));
  return card;
}

function sceneActions(scene, segment0) {
  const actions = el("div", { class: "actions" });
  if (canWrite() && scene.status === "generated") {
    actions.append(el("button", { type: "button", dataTestid: "approve", text: "Approve", onclick: (e) => approve(scene, e.target) }));
  }
  // Tiers above this one that it has not been upscaled to yet (repeating would return the same scene).
  const rank = tierRank(scene.tier);
  const done = (scene.upscale_targets || []).map((t) => t.tier);
  const higher = state.tiers.filter((t) => rank !== null && t.sort_order > rank && !done.includes(t.name));
  if (canWrite() && ["generated", "approved"].includes(scene.status) && higher.length) {
    const select = el("select", { dataTestid: "upscale-tier", "aria-label": "Upscale to" },
      higher.map((t) => el("option", { value: t.name, selected: t.name === "production", text: t.label })));
    // The one click the workflow is about: approved drafts and previews go to Production.
    const prominent = scene.status === "approved" && ["draft", "preview"].includes(scene.tier)
      && higher.some((t) => t.name === "production");
    actions.append(el("span", { class: "upscale" },
      el("button", { type: "button", class: prominent ? "primary" : "", dataTestid: "upscale", text: "Upscale to",
                     onclick: (e) => upscale(scene, select.value, e.target) }),
      select));
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
  $("compare-body").replaceChildren(...body);
  $("compare").showModal();
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
  addSegment();
  renderDeliveryWarning();
  start();
});

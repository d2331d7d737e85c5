// enclip search page: plain JS against the same-origin JSON API (no build step).
"use strict";

const FILTER_LABELS = {
  gender: "Gender", masterCategory: "Category", subCategory: "Sub-category", articleType: "Type",
  baseColour: "Colour", usage: "Usage", season: "Season",
};
const RESULT_COUNT = 24;
const CHANNEL_LABELS = { image: "photo", text: "title", keyword: "keyword" };

const page = {
  photo: null,        // File chosen by the user, or null
  similar: null,      // {id, title} of the item whose look-alikes are shown, or null
  seq: 0,             // numbers searches so a slow answer never overwrites a newer one
};

const $ = (id) => document.getElementById(id);

function chosenFilters() {
  const filters = {};
  for (const select of document.querySelectorAll("#filters select")) {
    if (select.value) filters[select.dataset.key] = select.value;
  }
  return filters;
}

function labelFor(key) {
  return FILTER_LABELS[key] || key.replace(/([a-z])([A-Z])/g, "$1 $2").replace(/^./, (c) => c.toUpperCase());
}

async function loadFilters() {
  const box = $("filters");
  try {
    const response = await fetch("/filters");
    const values = await response.json();
    if (!response.ok) throw new Error(values.error || response.statusText);
    $("filters-loading").remove();
    for (const [key, options] of Object.entries(values)) box.append(filterSelect(key, options));
  } catch (error) {
    $("filters-loading").textContent = "filters unavailable: " + error.message;
  }
}

function filterSelect(key, options) {
  const label = document.createElement("label");
  label.textContent = labelFor(key);
  const select = document.createElement("select");
  select.id = "filter-" + key;
  select.dataset.key = key;
  select.setAttribute("data-testid", "filter-" + key);
  select.append(new Option("Any", ""));
  for (const value of options) select.append(new Option(value, value));
  select.addEventListener("change", () => search());
  label.append(select);
  return label;
}

function updateWeightLabel() {
  const words = Math.round(Number($("weight").value) * 100);
  $("weight-label").textContent = `${words}% words · ${100 - words}% photo`;
}

function setPhoto(file) {
  page.photo = file;
  const preview = $("photo-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  if (file) {
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    $("dropzone-hint").textContent = file.name;
  } else {
    preview.removeAttribute("src");
    preview.hidden = true;
    $("dropzone-hint").textContent = "Drop a photo here or tap to choose one";
    $("photo").value = "";
  }
  $("clear-photo").hidden = !file;
}

function chosenChannels() {
  // Product text on (the default): every channel the index has. Off: photos only.
  return $("product-text").checked ? null : ["image"];
}

function buildRequest() {
  const text = $("query").value.trim();
  const weight = Number($("weight").value);
  const filters = chosenFilters();
  const channels = chosenChannels();
  if (page.similar) {
    return { kind: "similar", init: jsonInit({ image_id: page.similar.id, k: RESULT_COUNT, filters }) };
  }
  if (page.photo) {
    const form = new FormData();
    if (text) form.append("text", text);
    form.append("weight", String(weight));
    form.append("k", String(RESULT_COUNT));
    form.append("filters", JSON.stringify(filters));
    if (channels && text) form.append("channels", channels.join(","));
    form.append("image", page.photo, page.photo.name);
    return { kind: text ? "mixed" : "image", init: { method: "POST", body: form } };
  }
  if (text) {
    const body = { text, weight, k: RESULT_COUNT, filters };
    if (channels) body.channels = channels;
    return { kind: "text", init: jsonInit(body) };
  }
  return null;
}

function jsonInit(body) {
  return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
}

async function search() {
  const request = buildRequest();
  const results = $("results");
  if (!request) {
    showStatus("Type a description or add a photo to search.");
    return;
  }
  const seq = ++page.seq;
  results.dataset.state = "loading";
  showStatus("Searching…");
  try {
    const response = await fetch("/search", request.init);
    const body = await response.json();
    if (seq !== page.seq) return;
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    render(body, request.kind, seq);
  } catch (error) {
    if (seq !== page.seq) return;
    results.dataset.state = "error";
    results.dataset.seq = String(seq);
    showStatus(error.message, true);
  }
}

function render(body, kind, seq) {
  const results = $("results");
  results.replaceChildren(...body.hits.map(card));
  $("low-confidence").hidden = !body.low_confidence;
  const count = body.hits.length;
  showStatus(count ? `${count} result${count === 1 ? "" : "s"} in ${Math.round(body.took_ms)} ms`
                   : "Nothing matched; try other words or fewer filters.");
  results.dataset.kind = kind;
  results.dataset.seq = String(seq);
  results.dataset.state = "done";
}

function card(hit) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "card";
  button.setAttribute("data-testid", "result-card");
  button.dataset.id = hit.id;
  for (const [key, value] of Object.entries(hit.attributes)) {
    button.setAttribute("data-attr-" + key.toLowerCase(), value);  // lets tests and styles see the attributes
  }
  button.title = "Show similar items";
  const image = document.createElement("img");
  image.src = hit.image_url;
  image.alt = hit.title;
  image.setAttribute("data-testid", "result-image");
  const meta = document.createElement("span");
  meta.className = "meta";
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = hit.title;
  const score = document.createElement("span");
  score.className = "score";
  score.setAttribute("data-testid", "result-score");
  const members = hit.member_scores.length;
  score.textContent = `score ${hit.score.toFixed(3)}` +
    (members > 1 ? ` · ${hit.votes}/${members} models agree · spread ${hit.spread.toFixed(3)}` : "");
  meta.append(title, badges(hit), score);
  button.append(image, meta);
  button.addEventListener("click", () => showSimilar(hit));
  return button;
}

function badges(hit) {
  // Which channels found the hit and at what rank: "photo #3", "title #1", "keyword #2".
  const row = document.createElement("span");
  row.className = "badges";
  const found = Object.entries(hit.channels || {}).filter(([, rank]) => rank > 0);
  if (!Object.keys(hit.channels || {}).some((c) => c !== "image")) return row;  // photo-only search: no badges
  for (const [channel, rank] of found) {
    const badge = document.createElement("span");
    badge.className = `badge badge-${channel}`;
    badge.dataset.channel = channel;
    badge.setAttribute("data-testid", "channel-badge");
    badge.textContent = `${CHANNEL_LABELS[channel] || channel} #${rank}`;
    row.append(badge);
  }
  return row;
}

function showSimilar(hit) {
  page.similar = { id: hit.id, title: hit.title };
  $("similar-label").textContent = `Items similar to “${hit.title}”`;
  $("similar-banner").hidden = false;
  window.scrollTo({ top: 0, behavior: "smooth" });
  search();
}

function clearSimilar() {
  page.similar = null;
  $("similar-banner").hidden = true;
}

function showStatus(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

function wireDropzone() {
  const zone = $("dropzone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) { clearSimilar(); setPhoto(file); search(); }
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("photo").click(); }
  });
  $("photo").addEventListener("change", (event) => {
    const file = event.target.files[0] || null;
    clearSimilar();
    setPhoto(file);
    if (file) search();
  });
  $("clear-photo").addEventListener("click", () => { setPhoto(null); search(); });
}

function start() {
  $("search-form").addEventListener("submit", (event) => { event.preventDefault(); clearSimilar(); search(); });
  $("weight").addEventListener("input", updateWeightLabel);
  $("weight").addEventListener("change", () => { if (page.photo && $("query").value.trim()) search(); });
  $("clear-similar").addEventListener("click", () => { clearSimilar(); search(); });
  $("product-text").addEventListener("change", () => { if ($("query").value.trim()) search(); });
  wireDropzone();
  updateWeightLabel();
  loadFilters();
}

document.addEventListener("DOMContentLoaded", start);

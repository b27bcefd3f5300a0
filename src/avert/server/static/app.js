// avert's page: builds its controls from GET /v1/schema, submits jobs to /v1/generate or /v1/compare
// (?wait=false), follows GET /v1/jobs/{id}?preview=true for progress and a live preview, keeps this browser's
// results in localStorage, saves presets of negatives with /v1/presets and fills the form from an infotext
// (/v1/infotext) or a dropped PNG (/sdapi/v1/png-info).
"use strict";

const $ = (id) => document.getElementById(id);
const SETTINGS = ["steps", "cfg_scale", "seed", "width", "height", "batch_size", "eta"];
const HISTORY_KEY = "avert.history";
const HISTORY_MAX = 48;
let schema = null;
let params = {};  // name -> the schema's declared parameter
let currentJob = null;
let initImage = null;  // a data: URL, sent as init_image (img2img)
let maskImage = null;  // a data: URL, sent as mask with an init image (inpainting)
let presets = {};

class ApiError extends Error {
  constructor(detail, errors) { super(detail); this.errors = errors || []; }
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method, headers: body ? {"Content-Type": "application/json"} : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({detail: response.statusText}));
  if (!response.ok && response.status !== 202 && !(response.status === 409 && data.status)) {
    throw new ApiError(data.detail || response.statusText, data.errors);
  }
  return data;
}

// ------------------------------------------------------------------ controls from the schema

function humanize(name) {
  const text = name.replace(/^hr_/, "hires ").replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function control(param) {
  // a labelled input, checkbox or select for a declared parameter: choices, default, bounds and help
  const label = document.createElement("label");
  label.className = "field";
  let element;
  if (param.choices.length) {
    element = document.createElement("select");
    if (param.default === null) element.add(new Option(param.unset ? `(${param.unset})` : "(default)", ""));
    for (const choice of param.choices) element.add(new Option(choice, choice, false, choice === param.default));
  } else if (param.type === "bool") {
    element = Object.assign(document.createElement("input"), {type: "checkbox", checked: param.default === true});
    label.classList.add("check");
  } else if (param.type === "int" || param.type === "float") {
    element = Object.assign(document.createElement("input"), {type: "number", step: param.type === "int" ? "1" : "any"});
    if (param.default !== null) element.value = param.default;
    if (param.unset) element.placeholder = param.unset.length > 24 ? "default" : param.unset;
  } else {
    element = Object.assign(document.createElement("input"), {type: "text"});
    if (param.default) element.value = param.default;
    if (param.unset) element.placeholder = param.unset;
  }
  element.id = param.name;
  setUp(element, param);
  const text = document.createElement("span");
  text.textContent = humanize(param.name);
  if (element.type === "checkbox") label.append(element, text);
  else label.append(text, element);
  return label;
}

function setUp(element, param) {
  element.title = `${param.help}; ${param.allowed}`;
  if (element.tagName === "SELECT" && !element.options.length) {
    for (const choice of param.choices) element.add(new Option(choice, choice, false, choice === param.default));
  } else if (element.type === "number") {
    if (param.default !== null && element.value === "") element.value = param.default;
    if (param.min !== null) element.min = param.min;
    if (param.max !== null) element.max = param.max;
  }
}

function isDefault(name) {
  // the control shows the field's default (or nothing, for a field whose default is left to the model)
  const param = params[name], element = $(name);
  if (element.type === "checkbox") return element.checked === (param.default === true);
  if (element.value.trim() === "") return true;
  if (param.default === null) return false;
  return element.type === "number" ? Number(element.value) === Number(param.default) : element.value === param.default;
}

function value(name) {
  const element = $(name);
  if (element.type === "checkbox") return element.checked;
  return element.type === "number" ? Number(element.value) : element.value;
}

function buildGroups() {
  for (const box of document.querySelectorAll(".fields[data-group]")) {
    for (const name of schema.groups[box.dataset.group]) {
      if (params[name] && !$(name)) box.appendChild(control(params[name]));
    }
  }
  $("guidance").options[0].textContent = "the model's default";
  $("negatives_rule").options[0].textContent = "the method's default";
  $("guidance").addEventListener("change", showMethodOptions);
  $("enable_hr").addEventListener("change", showHires);
  showMethodOptions();
  showHires();
}

function showMethodOptions() {
  // each method's own options only while it is chosen; negative_scale only for methods with a scale of their own
  const method = $("guidance").value;
  const own = new Set(schema.method_options[method] || []);
  for (const name of new Set(Object.values(schema.method_options).flat())) $(name).closest("label").hidden = !own.has(name);
  $("negative_scale").closest("label").hidden = schema.one_scale.includes(method);
}

function showHires() {
  for (const name of schema.groups.hires) {
    if (name !== "enable_hr") $(name).closest("label").hidden = !$("enable_hr").checked;
  }
}

function active(name) {
  // a field is sent only from a section in use, and only where it differs from its default
  const box = $(name).closest(".fields");
  const needs = box && box.dataset.needs;
  if (name === "strength") return !!initImage || $("enable_hr").checked;  // img2img's, and the hires fix's
  if (needs === "init" && !initImage) return false;
  if (needs === "mask" && !(initImage && maskImage)) return false;
  if (needs === "hires" && name !== "enable_hr" && (!$("enable_hr").checked || initImage)) return false;
  return !$(name).closest("label").hidden;
}

// ------------------------------------------------------------------ negatives and presets

function addNegative(text = "", weight = 1, start = 0, end = 1) {
  const row = $("negative-row").content.firstElementChild.cloneNode(true);
  const n = $("negatives").children.length + 1;
  row.querySelector(".neg-text").value = text;
  row.querySelector(".neg-weight").value = weight;
  row.querySelector(".neg-start").value = start;
  row.querySelector(".neg-end").value = end;
  row.querySelector(".neg-text").setAttribute("aria-label", `Negative prompt ${n}`);
  row.querySelector(".neg-weight").setAttribute("aria-label", `Weight of negative ${n}`);
  row.querySelector(".neg-start").setAttribute("aria-label", `Negative ${n} acts from (fraction of the run)`);
  row.querySelector(".neg-end").setAttribute("aria-label", `Negative ${n} acts until (fraction of the run)`);
  const remove = row.querySelector(".remove");
  remove.setAttribute("aria-label", `Remove negative ${n}`);
  remove.title = "remove";
  remove.onclick = () => row.remove();
  for (const extra of row.querySelectorAll(".weight, .window")) extra.hidden = !supportsWeights();
  $("negatives").appendChild(row);
}

function supportsWeights() {
  return !!schema && schema.fields.includes("negatives");
}

function negatives() {
  return [...document.querySelectorAll("#negatives .negative")]
    .map((row) => ({text: row.querySelector(".neg-text").value.trim(),
                    weight: parseFloat(row.querySelector(".neg-weight").value),
                    start: parseFloat(row.querySelector(".neg-start").value),
                    end: parseFloat(row.querySelector(".neg-end").value)}))
    .filter((n) => n.text);
}

function negativeValue(n) {
  // a negative as the API takes it: its text alone where weight and window are the defaults
  return n.weight === 1 && n.start === 0 && n.end === 1 ? n.text : {text: n.text, weight: n.weight, start: n.start, end: n.end};
}

function setNegatives(list) {
  $("negatives").replaceChildren();
  for (const n of list) {
    if (typeof n === "string") addNegative(n);
    else addNegative(n.text, n.weight ?? 1, n.start ?? 0, n.end ?? 1);
  }
  if (!list.length) addNegative();
}

async function loadPresets(selected = "") {
  presets = (await api("GET", "/v1/presets")).presets;
  $("preset").replaceChildren(new Option("(choose a saved preset)", ""));
  for (const name of Object.keys(presets).sort()) $("preset").add(new Option(name, name, false, name === selected));
  $("delete-preset").disabled = !$("preset").value;
}

function applyPreset() {
  const preset = presets[$("preset").value];
  $("delete-preset").disabled = !preset;
  if (!preset) return;
  setNegatives(preset.negatives);
  $("negatives_rule").value = preset.negatives_rule || "";
  $("guidance").value = preset.guidance || "";
  showMethodOptions();
}

async function savePreset() {
  const name = $("preset-name").value.trim();
  const body = {negatives: negatives().map(negativeValue), negatives_rule: $("negatives_rule").value || null,
                guidance: $("guidance").value || null};
  try {
    await api("PUT", `/v1/presets/${encodeURIComponent(name)}`, body);
    await loadPresets(name);
    $("preset-name").value = "";
    showError("");
  } catch (error) {
    showError(error.message, error.errors, {name: "preset-name"});
  }
}

async function deletePreset() {
  const name = $("preset").value;
  if (!name) return;
  try {
    await api("DELETE", `/v1/presets/${encodeURIComponent(name)}`);
    await loadPresets();
  } catch (error) {
    showError(error.message, error.errors);
  }
}

// ------------------------------------------------------------------ requests

function requestBody() {
  const body = {prompt: $("prompt").value, sampler: $("sampler").value, model: $("model").value};
  if (!isDefault("schedule_type")) body.schedule_type = $("schedule_type").value;
  for (const name of SETTINGS) {
    const text = $(name).value.trim();
    if (text !== "") body[name] = Number(text);
  }
  for (const names of Object.values(schema.groups)) {
    for (const name of names) {
      if ($(name) && active(name) && !isDefault(name)) body[name] = value(name);
    }
  }
  if (initImage) {
    body.init_image = initImage;
    if (maskImage) body.mask = maskImage;
  }
  return body;
}

function withNegatives(body) {
  const list = negatives();
  if (supportsWeights()) body.negatives = list.map(negativeValue);
  else body.negative_prompt = list.map((n) => n.text).join(", ");
  if (list.length < 2) delete body.negatives_rule;  // one negative is the same under every rule
  return body;
}

async function run(path, body, show) {
  showError("");
  $("warnings").replaceChildren();
  setBusy(true);
  try {
    const job = await api("POST", `${path}?wait=false`, body);
    currentJob = job.id;
    const done = await follow(job.id);
    if (done.status === "failed") throw new ApiError(done.error.detail, done.error.errors);
    if (done.status === "cancelled") throw new ApiError("cancelled");
    for (const w of done.warnings) $("warnings").appendChild(Object.assign(document.createElement("li"), {textContent: w}));
    show(done);
  } catch (error) {
    showError(error.message, error.errors);
  } finally {
    currentJob = null;
    setBusy(false);
  }
}

async function follow(id) {
  for (;;) {
    const job = await api("GET", `/v1/jobs/${id}?images=false&preview=true`);
    $("progress").value = job.progress.fraction;
    $("progress-text").textContent = `${job.status} ${Math.round(job.progress.fraction * 100)}%`;
    if (job.progress.preview) {
      $("preview").src = `data:image/png;base64,${job.progress.preview}`;
      $("preview").hidden = false;
    }
    if (["done", "failed", "cancelled"].includes(job.status)) {
      $("preview").hidden = true;
      return job.status === "done" ? api("GET", `/v1/jobs/${id}`) : job;
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("compare").disabled = busy;
  $("cancel").disabled = !busy;
}

function fieldElement(field, extra) {
  // the control an error names: a field, negatives[i].x (row i), columns[i] (negative row i)
  const row = /^(negatives|columns)\[(\d+)\](?:\.(\w+))?/.exec(field);
  if (row) {
    const rows = document.querySelectorAll("#negatives .negative");
    const input = {weight: ".neg-weight", start: ".neg-start", end: ".neg-end"}[row[3]] || ".neg-text";
    return rows[Number(row[2])] ? rows[Number(row[2])].querySelector(input) : null;
  }
  const name = (extra && extra[field]) || field;
  return $(name) || (field === "negative_prompt" ? document.querySelector("#negatives .neg-text") : null);
}

function showError(message, errors = [], extra = null) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
  for (const old of document.querySelectorAll(".field-error")) old.remove();
  for (const old of document.querySelectorAll("[aria-invalid]")) old.removeAttribute("aria-invalid");
  for (const problem of errors || []) {
    const element = fieldElement(problem.field, extra);
    if (!element) continue;
    element.setAttribute("aria-invalid", "true");
    const note = Object.assign(document.createElement("span"), {className: "field-error", textContent: problem.message});
    note.id = `${element.id || "field"}-error-${document.querySelectorAll(".field-error").length}`;
    element.setAttribute("aria-describedby", note.id);
    (element.closest("label") || element).after(note);
    const section = element.closest("details");
    if (section) section.open = true;
  }
}

// ------------------------------------------------------------------ results and history

function picture(image, caption) {
  const figure = document.createElement("figure");
  const img = new Image();
  img.src = `data:image/png;base64,${image.png}`;
  img.alt = caption;
  img.title = image.infotext;
  figure.append(img, Object.assign(document.createElement("figcaption"), {textContent: caption}));
  return figure;
}

function result(entry) {
  // an image of the gallery: large enough to see (small models upscaled crisply), its parameters, a download
  const figure = picture(entry, entry.caption);
  const details = document.createElement("details");
  details.append(Object.assign(document.createElement("summary"), {textContent: "Parameters"}),
                 Object.assign(document.createElement("pre"), {textContent: entry.infotext}));
  const download = Object.assign(document.createElement("a"), {href: `data:image/png;base64,${entry.png}`,
                                 download: `avert-${entry.seed}.png`, textContent: "Download PNG"});
  download.setAttribute("aria-label", `Download the PNG of ${entry.caption}`);
  const reuse = Object.assign(document.createElement("button"), {type: "button", textContent: "Use settings"});
  reuse.setAttribute("aria-label", `Use the settings of ${entry.caption}`);
  reuse.onclick = () => fillFrom(entry.infotext);
  const tools = Object.assign(document.createElement("div"), {className: "tools"});
  tools.append(download, reuse);
  figure.append(tools, details);
  return figure;
}

function showGallery(job) {
  const entries = job.images.map((image) => ({
    png: image.png, infotext: image.infotext, seed: image.seed,
    caption: `seed ${image.seed}` + (image.negative_prompt ? `, negative: ${image.negative_prompt}` : ", no negative") +
      ` · ${image.width}x${image.height}`,
  }));
  for (const entry of [...entries].reverse()) $("gallery").prepend(result(entry));  // newest batch first
  remember(entries);
}

function history() {
  try {
    return JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
  } catch {
    return [];
  }
}

function remember(entries) {
  // newest first, at most HISTORY_MAX, and fewer where the browser's storage is full
  let kept = [...entries, ...history()].slice(0, HISTORY_MAX);
  while (kept.length) {
    try {
      localStorage.setItem(HISTORY_KEY, JSON.stringify(kept));
      return;
    } catch {
      kept = kept.slice(0, -1);
    }
  }
}

function showHistory() {
  for (const entry of history()) $("gallery").appendChild(result(entry));
}

function showCompare(job) {
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  head.appendChild(document.createElement("th"));
  for (const label of job.labels) head.appendChild(Object.assign(document.createElement("th"), {textContent: label}));
  const body = table.createTBody();
  for (const seed of [...new Set(job.seeds)]) {
    const row = body.insertRow();
    row.appendChild(Object.assign(document.createElement("th"), {textContent: `seed ${seed}`}));
    for (const label of job.labels) {
      const image = job.images.find((i) => i.label === label && i.seed === seed);
      row.insertCell().appendChild(picture(image, label));
    }
    if (job.images.some((i) => i.seed === seed && i.map_png)) {
      for (const [key, what] of [["map_png", "where the negative acted"], ["difference_png", "pixel change"]]) {
        const extra = body.insertRow();
        extra.className = key.replace("_png", "");
        extra.appendChild(Object.assign(document.createElement("th"), {textContent: `seed ${seed}: ${what}`}));
        for (const label of job.labels) {
          const image = job.images.find((i) => i.label === label && i.seed === seed);
          extra.insertCell().appendChild(image[key] ? picture({png: image[key], infotext: what}, `${label}: ${what}`)
                                                    : document.createTextNode(""));
        }
      }
    }
  }
  const title = Object.assign(document.createElement("p"), {textContent: job.images[0].record.request.prompt});
  $("compare-view").replaceChildren(title, table);
}

// ------------------------------------------------------------------ images in, parameters in

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function chooseInit(file) {
  initImage = file ? await readDataUrl(file) : null;
  $("clear-init").hidden = !initImage;
  $("init-hint").textContent = initImage ? `img2img from ${file.name}` : "None: text to image.";
  if (!file) $("init-image").value = "";
}

async function chooseMask(file) {
  maskImage = file ? await readDataUrl(file) : null;
  $("clear-mask").hidden = $("mask-settings").hidden = !maskImage;
  $("mask-hint").textContent = maskImage ? `inpainting: re-draw where ${file.name} is white (with an init image)`
    : "No mask: the whole image is re-drawn (inpainting: white or opaque = re-draw).";
  if (!file) $("mask").value = "";
}

async function readMetadata(file) {
  showError("");
  const data = await readDataUrl(file);
  try {
    const info = await api("POST", "/sdapi/v1/png-info", {image: data});
    $("infotext").value = info.info || "";
    if (!info.info) showError(`${file.name} holds no generation parameters`);
  } catch (error) {
    $("infotext").value = "";
    showError(error.message, error.errors);
  }
}

async function fillFrom(text) {
  // every field the infotext sets; the others back to their defaults
  showError("");
  let fields;
  try {
    fields = (await api("POST", "/v1/infotext", {infotext: text})).fields;
  } catch (error) {
    return showError(error.message, error.errors);
  }
  $("prompt").value = fields.prompt || "";
  setNegatives([...(fields.negative_prompt ? [fields.negative_prompt] : []), ...(fields.negatives || [])]);
  for (const param of schema.params) {
    const element = $(param.name);
    if (!element || ["prompt", "negative_prompt"].includes(param.name)) continue;
    const given = param.name in fields ? fields[param.name] : param.default;
    if (element.type === "checkbox") element.checked = given === true;
    else element.value = given === null || given === undefined ? "" : given;
  }
  showMethodOptions();
  showHires();
  $("prompt").focus();
}

// ------------------------------------------------------------------ start

async function init() {
  schema = await api("GET", "/v1/schema");
  params = Object.fromEntries(schema.params.map((p) => [p.name, p]));
  const models = await api("GET", "/v1/models");
  for (const name of models.models) $("model").add(new Option(name, name, false, name === models.default));
  for (const name of [...SETTINGS, "sampler", "schedule_type"]) setUp($(name), params[name]);
  buildGroups();
  $("negatives-hint").textContent = supportsWeights()
    ? "Each negative has its own weight, and acts from / to a fraction of the run (0 to 1)."
    : "Several negatives are joined with commas (this engine takes one negative text).";
  const describe = () => {
    const about = models.about[$("model").value];
    $("model-hint").textContent = about ? `This model is ${about.about}. It knows: ${about.concepts.join(", ")}.` : "";
  };
  $("model").addEventListener("change", describe);
  describe();
  addNegative();
  showHistory();
  await loadPresets();
}

function generateNow() {
  run("/v1/generate", withNegatives(requestBody()), showGallery);
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  generateNow();
});
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key === "Enter" && !$("generate").disabled) {
    event.preventDefault();
    generateNow();
  }
});
$("compare").onclick = () => {
  const body = requestBody();
  delete body.negatives_rule;  // each column has one negative
  body.columns = negatives().map((n) => (supportsWeights() ? negativeValue(n) : n.text));
  if (!body.columns.length) return showError("columns: add at least one negative to compare");
  if ($("map").checked) body.map = true;
  run("/v1/compare", body, showCompare);
};
$("cancel").onclick = () => currentJob && api("DELETE", `/v1/jobs/${currentJob}`).catch((e) => showError(e.message));
$("add-negative").onclick = () => addNegative();
$("preset").onchange = applyPreset;
$("save-preset").onclick = savePreset;
$("delete-preset").onclick = deletePreset;
$("fill").onclick = () => fillFrom($("infotext").value);
$("clear-history").onclick = () => { localStorage.removeItem(HISTORY_KEY); $("gallery").replaceChildren(); };
$("file").onchange = () => $("file").files[0] && readMetadata($("file").files[0]);
$("init-image").onchange = () => chooseInit($("init-image").files[0] || null).catch((e) => showError(e.message));
$("clear-init").onclick = () => chooseInit(null);
$("mask").onchange = () => chooseMask($("mask").files[0] || null).catch((e) => showError(e.message));
$("clear-mask").onclick = () => chooseMask(null);
$("drop").addEventListener("dragover", (event) => { event.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  if (event.dataTransfer.files[0]) readMetadata(event.dataTransfer.files[0]);
});
init().catch((error) => showError(`could not load the settings: ${error.message}`));

// avert's page: builds its settings from GET /v1/schema, submits jobs to /v1/generate or /v1/compare
// (?wait=false), follows GET /v1/jobs/{id} for progress, and reads dropped PNGs with /sdapi/v1/png-info.
"use strict";

const $ = (id) => document.getElementById(id);
const SETTINGS = ["steps", "cfg_scale", "seed", "width", "height", "batch_size", "eta"];
let schema = null;
let currentJob = null;
let initImage = null;  // a data: URL, sent as init_image (img2img)
let maskImage = null;  // a data: URL, sent as mask with an init image (inpainting)
// fields set up from the schema by their element: sent with an init image, with a mask too, or with the hires fix
const IMG2IMG_FIELDS = ["strength", "resize_mode", "initial_noise_multiplier"];
const MASK_FIELDS = ["mask_blur", "inpainting_fill", "inpaint_full_res", "inpainting_mask_invert"];
const HIRES_FIELDS = ["strength", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_negative_prompt"];

async function api(method, path, body) {
  const response = await fetch(path, {
    method, headers: body ? {"Content-Type": "application/json"} : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({detail: response.statusText}));
  if (!response.ok && response.status !== 202 && !(response.status === 409 && data.status)) {
    throw new Error(data.detail || response.statusText);
  }
  return data;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function addNegative(text = "", weight = 1) {
  const row = $("negative-row").content.firstElementChild.cloneNode(true);
  row.querySelector(".neg-text").value = text;
  row.querySelector(".neg-weight").value = weight;
  row.querySelector(".remove").onclick = () => row.remove();
  row.querySelector(".weight").hidden = !supportsWeights();
  $("negatives").appendChild(row);
}

function supportsWeights() {
  return !!schema && schema.fields.includes("negatives");
}

function negatives() {
  return [...document.querySelectorAll("#negatives .negative")]
    .map((row) => ({text: row.querySelector(".neg-text").value.trim(),
                    weight: parseFloat(row.querySelector(".neg-weight").value)}))
    .filter((n) => n.text);
}

async function init() {
  schema = await api("GET", "/v1/schema");
  const models = await api("GET", "/v1/models");
  for (const name of models.models) {
    $("model").add(new Option(name, name, false, name === models.default));
  }
  for (const param of schema.params) {
    if (param.name === "negatives_rule") {
      $("negatives_rule").add(new Option("the method's default", "", false, true));
      for (const choice of param.choices) $("negatives_rule").add(new Option(choice, choice));
      $("negatives_rule").title = `${param.help}; ${param.allowed}`;
      $("rule-label").hidden = false;
    } else if (param.name === "guidance") {  // avert's methods and diffusers' guiders, by the schema's choices
      $("guidance").add(new Option("the model's default", "", false, true));
      for (const choice of param.choices) $("guidance").add(new Option(choice, choice));
      $("guidance").title = `${param.help}; ${param.allowed}`;
      $("guidance-label").hidden = false;
    } else if ([...SETTINGS, "sampler", ...IMG2IMG_FIELDS, ...MASK_FIELDS, ...HIRES_FIELDS].includes(param.name)) {
      setUp($(param.name), param);
    }
  }
  $("negatives-hint").textContent = supportsWeights()
    ? "Each negative has its own weight."
    : "Several negatives are joined with commas (this engine takes one negative text).";
  addNegative();
}

function setUp(element, param) {
  // an input, checkbox or select from its declared parameter: choices, default, bounds and help
  element.title = `${param.help}; ${param.allowed}`;
  if (element.tagName === "SELECT") {
    for (const choice of param.choices) element.add(new Option(choice, choice, false, choice === param.default));
  } else if (element.type === "checkbox") {
    element.checked = param.default === true;
  } else {
    if (param.default !== null) element.value = param.default;
    if (param.min !== null) element.min = param.min;
    if (param.max !== null) element.max = param.max;
  }
}

function putFields(body, names) {
  // the fields' values by their element (an empty number is left to the server's default)
  for (const name of names) {
    const element = $(name);
    if (element.type === "checkbox") body[name] = element.checked;
    else if (element.type === "number") { if (element.value.trim() !== "") body[name] = Number(element.value); }
    else body[name] = element.value;
  }
}

function requestBody() {
  const body = {prompt: $("prompt").value, sampler: $("sampler").value, model: $("model").value};
  for (const name of SETTINGS) {
    const text = $(name).value.trim();
    if (text !== "") body[name] = Number(text);
  }
  if (initImage) {
    body.init_image = initImage;
    putFields(body, IMG2IMG_FIELDS);
    if (maskImage) {
      body.mask = maskImage;
      putFields(body, MASK_FIELDS);
    }
  } else if ($("enable_hr").checked) {
    body.enable_hr = true;
    putFields(body, HIRES_FIELDS);
  }
  return body;
}

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

function withNegatives(body) {
  const list = negatives();
  if (supportsWeights()) body.negatives = list.map((n) => ({text: n.text, weight: n.weight}));
  else body.negative_prompt = list.map((n) => n.text).join(", ");
  if (supportsWeights() && list.length > 1 && $("negatives_rule").value) body.negatives_rule = $("negatives_rule").value;
  if (supportsWeights() && $("guidance").value) body.guidance = $("guidance").value;
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
    if (done.status === "failed") throw new Error(done.error.detail);
    if (done.status === "cancelled") throw new Error("cancelled");
    for (const w of done.warnings) $("warnings").appendChild(Object.assign(document.createElement("li"), {textContent: w}));
    show(done);
  } catch (error) {
    showError(error.message);
  } finally {
    currentJob = null;
    setBusy(false);
  }
}

async function follow(id) {
  for (;;) {
    const job = await api("GET", `/v1/jobs/${id}?images=false`);
    $("progress").value = job.progress.fraction;
    $("progress-text").textContent = `${job.status} ${Math.round(job.progress.fraction * 100)}%`;
    if (["done", "failed", "cancelled"].includes(job.status)) {
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

function picture(image, caption) {
  const figure = document.createElement("figure");
  const img = new Image();
  img.src = `data:image/png;base64,${image.png}`;
  img.alt = caption;
  img.title = image.infotext;
  figure.append(img, Object.assign(document.createElement("figcaption"), {textContent: caption}));
  return figure;
}

function showGallery(job) {
  for (const image of [...job.images].reverse()) {  // newest batch on top, in batch order
    const negative = image.negative_prompt ? `, negative: ${image.negative_prompt}` : "";
    $("gallery").prepend(picture(image, `seed ${image.seed}${negative}`));
  }
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
          extra.insertCell().appendChild(image[key] ? picture({png: image[key], infotext: what}, what) : document.createTextNode(""));
        }
      }
    }
  }
  const title = Object.assign(document.createElement("p"), {textContent: job.images[0].record.request.prompt});
  $("compare-view").replaceChildren(title, table);
}

async function readMetadata(file) {
  showError("");
  const data = await readDataUrl(file);
  try {
    const info = await api("POST", "/sdapi/v1/png-info", {image: data});
    $("meta").textContent = info.info || "(no generation parameters in this image)";
  } catch (error) {
    $("meta").textContent = "";
    showError(error.message);
  }
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  run("/v1/generate", withNegatives(requestBody()), showGallery);
});
$("compare").onclick = () => {
  const body = requestBody();
  body.columns = negatives().map((n) => (supportsWeights() ? {text: n.text, weight: n.weight} : n.text));
  if (!body.columns.length) return showError("columns: add at least one negative to compare");
  if ($("map").checked) body.map = true;
  run("/v1/compare", body, showCompare);
};
$("cancel").onclick = () => currentJob && api("DELETE", `/v1/jobs/${currentJob}`).catch((e) => showError(e.message));
$("add-negative").onclick = () => addNegative();
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

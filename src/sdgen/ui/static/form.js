// The generation form: its values as a POST /v1/jobs body, the init picture (img2img) and its
// painted mask (inpainting), and the server's validation errors shown next to the field they
// name. Empty fields are left out of the body, so the server's own defaults apply (they are
// never copied here).

import { clearMask, maskPicture, resetMask, setupMaskPainter } from "./mask.js";

const TEXT_FIELDS = ["prompt", "negative_prompt"];
const NUMBER_FIELDS = [
  "width", "height", "steps", "guidance_scale", "seed", "num_images", "clip_skip",
  "variation_seed", "variation_strength",
];
const CHOICE_FIELDS = ["model", "sampler", "emphasis", "long_prompt"];
const HIRES_NUMBERS = ["scale", "steps", "strength"]; // inputs "hires.scale", ...

const $ = (id) => document.getElementById(id);

let initPicture = null; // a data: URL (the API accepts base64 or data: URLs), or null

// The request body; throws an Error with `field` set when a number field cannot be read.
export function jobBody() {
  const body = {};
  for (const name of TEXT_FIELDS) body[name] = $(name).value;
  for (const name of CHOICE_FIELDS) {
    if ($(name).value) body[name] = $(name).value;
  }
  for (const name of NUMBER_FIELDS) {
    const value = numberOf(name);
    if (value !== undefined) body[name] = value;
  }
  const resize = seedResizeFrom();
  if (resize) body.seed_resize_from = resize;
  if ($("tiling").checked) body.tiling = true;
  if ($("hires-on").checked) body.hires = hiresOptions();
  if (initPicture) {
    body.init_image = initPicture;
    body.strength = Number($("strength").value);
    const mask = maskPicture();
    if (mask) Object.assign(body, { mask }, maskOptions());
  }
  return body;
}

// The number typed in field `name`, or undefined when it is empty. Sent as typed: the server says
// what it allows (a width of 65 is not rounded).
function numberOf(name) {
  const input = $(name);
  const text = input.value.trim();
  if (text === "") {
    if (input.validity.badInput) throw fieldError(name, `${labelOf(name)}: not a number`);
    return undefined;
  }
  const value = Number(text);
  if (!Number.isFinite(value)) throw fieldError(name, `${labelOf(name)}: not a number`);
  return value;
}

// A1111's "resize seed from": [width, height] when both are typed, else nothing.
function seedResizeFrom() {
  const [width, height] = ["width", "height"].map((side) => numberOf(`seed_resize_from.${side}`));
  if (width === undefined && height === undefined) return null;
  if (width === undefined || height === undefined) {
    throw fieldError("seed_resize_from", "Resize seed from: give both a width and a height");
  }
  return [width, height];
}

// The hires fix's settings (the server names its errors "hires.scale", the inputs' ids).
function hiresOptions() {
  const hires = {};
  for (const name of HIRES_NUMBERS) {
    const value = numberOf(`hires.${name}`);
    if (value !== undefined) hires[name] = value;
  }
  if ($("hires.upscaler").value) hires.upscaler = $("hires.upscaler").value;
  for (const name of ["prompt", "negative_prompt"]) {
    const text = $(`hires.${name}`).value;
    if (text.trim()) hires[name] = text; // empty: the first pass's, as A1111's
  }
  return hires;
}

// Inpainting's options, sent with a painted mask only (the server refuses them without one).
function maskOptions() {
  const options = { overlay: $("overlay").checked };
  const blur = numberOf("mask_blur");
  if (blur !== undefined) options.mask_blur = blur;
  if ($("only-masked").checked) {
    // Left out, padding_mask_crop would mean the whole picture: the box asks for a number.
    const padding = numberOf("padding_mask_crop");
    if (padding === undefined) {
      throw fieldError("padding_mask_crop", "Padding: the pixels around the mask, for Only masked");
    }
    options.padding_mask_crop = padding;
  }
  if ($("masked_content").value) options.masked_content = $("masked_content").value;
  return options;
}

function fieldError(field, message) {
  const error = new Error(message);
  error.field = field;
  return error;
}

function labelOf(name) {
  const label = document.querySelector(`label[for="${name}"]`);
  return label ? label.textContent.trim() : name;
}

// Shows `message` next to the control of `field` (or under the form when there is none).
export function showError(field, message) {
  const slot = (field && $(`${field}-error`)) || $("form-error");
  slot.textContent = message;
  const control = field && $(field);
  if (control && slot.id !== "form-error") {
    control.setAttribute("aria-invalid", "true");
    control.setAttribute("aria-describedby", slot.id);
    control.focus();
  }
}

export function clearErrors() {
  for (const slot of document.querySelectorAll("#job-form .error")) slot.textContent = "";
  for (const control of document.querySelectorAll("#job-form [aria-invalid]")) {
    control.removeAttribute("aria-invalid");
    control.removeAttribute("aria-describedby");
  }
}

// Fills the seed, the variation seed and strength a varied picture was made with (empty for a
// picture made without: a new variation seed would be drawn, another picture), and the size its
// seed's noise was resized from (empty for none).
export function setSeed(seed, variationSeed = null, variationStrength = null, resizeFrom = null) {
  const fields = {
    seed,
    variation_seed: variationSeed,
    variation_strength: variationStrength,
    "seed_resize_from.width": resizeFrom ? resizeFrom[0] : null,
    "seed_resize_from.height": resizeFrom ? resizeFrom[1] : null,
  };
  for (const [id, value] of Object.entries(fields)) {
    $(id).value = value === null ? "" : String(value);
    $(id).dispatchEvent(new Event("input", { bubbles: true }));
  }
}

export function fillChoices(select, options, selected) {
  const keep = select.querySelector('option[value=""]');
  select.replaceChildren(...(keep ? [keep] : []));
  for (const { value, text } of options) {
    const option = new Option(text, value, false, value === selected);
    select.append(option);
  }
}

let loads = 0; // counts useInitPicture calls: only the latest one shows its picture

// Makes `blob` (a picture) the init picture of the next job: the job becomes img2img, or
// inpainting once a mask is painted on it. A new picture starts with no mask.
export async function useInitPicture(blob) {
  const load = ++loads;
  const picture = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
  if (load !== loads) return;
  initPicture = picture;
  clearMask(); // the old mask never goes with the new picture, even for a moment
  const preview = $("init-preview");
  preview.src = picture;
  let decoded = true;
  try {
    await preview.decode();
  } catch {
    decoded = false; // not a picture the browser reads: sent anyway, the server says why not
  }
  if (load !== loads) return;
  resetMask(decoded ? preview : null); // a mask of the picture's own size
  $("mask-painter").hidden = $("mask-tools").hidden = !decoded;
  $("init-chosen").hidden = false;
  $("strength").disabled = false;
  $("init").classList.add("active");
}

export function clearInitPicture() {
  loads++;
  initPicture = null;
  resetMask(null);
  $("init-preview").removeAttribute("src");
  $("init-chosen").hidden = true;
  $("strength").disabled = true;
  $("init-file").value = "";
  $("init").classList.remove("active");
}

export function setupForm() {
  const strength = $("strength");
  const shown = () => ($("strength-value").textContent = Number(strength.value).toFixed(2));
  strength.addEventListener("input", shown);
  shown();
  $("init-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (file) await useInitPicture(file);
  });
  $("init-clear").addEventListener("click", clearInitPicture);
  const hiresOn = $("hires-on");
  hiresOn.addEventListener("change", () => ($("hires-options").disabled = !hiresOn.checked));
  setupMaskPainter();
  // An edited field loses its error: the message described the value that was sent.
  $("job-form").addEventListener("input", (event) => {
    const slot = event.target.id && $(`${event.target.id}-error`);
    if (slot) slot.textContent = "";
    event.target.removeAttribute?.("aria-invalid");
  });
}

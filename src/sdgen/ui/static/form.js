// The generation form: its values as a POST /v1/jobs body, the init picture (img2img), and the
// server's validation errors shown next to the field they name. Empty fields are left out of the
// body, so the server's own defaults apply (they are never copied here).

const TEXT_FIELDS = ["prompt", "negative_prompt"];
const NUMBER_FIELDS = ["width", "height", "steps", "guidance_scale", "seed", "num_images"];
const CHOICE_FIELDS = ["model", "sampler"];

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
    const input = $(name);
    const text = input.value.trim();
    if (text === "") {
      if (input.validity.badInput) throw fieldError(name, `${labelOf(name)}: not a number`);
      continue;
    }
    const value = Number(text);
    if (!Number.isFinite(value)) throw fieldError(name, `${labelOf(name)}: not a number`);
    body[name] = value; // sent as typed: the server says what it allows (65 is not rounded)
  }
  if (initPicture) {
    body.init_image = initPicture;
    body.strength = Number($("strength").value);
  }
  return body;
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

export function setSeed(seed) {
  $("seed").value = String(seed);
  $("seed").dispatchEvent(new Event("input", { bubbles: true }));
}

export function fillChoices(select, options, selected) {
  const keep = select.querySelector('option[value=""]');
  select.replaceChildren(...(keep ? [keep] : []));
  for (const { value, text } of options) {
    const option = new Option(text, value, false, value === selected);
    select.append(option);
  }
}

// Makes `blob` (a picture) the init picture of the next job: the job becomes img2img.
export async function useInitPicture(blob) {
  initPicture = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
  $("init-preview").src = initPicture;
  $("init-chosen").hidden = false;
  $("strength").disabled = false;
  $("init").classList.add("active");
}

export function clearInitPicture() {
  initPicture = null;
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
  // An edited field loses its error: the message described the value that was sent.
  $("job-form").addEventListener("input", (event) => {
    const slot = event.target.id && $(`${event.target.id}-error`);
    if (slot) slot.textContent = "";
    event.target.removeAttribute?.("aria-invalid");
  });
}

// The page's start: load models and samplers, wire the form, ask for the API key on a 401.

import { ApiError, apiKey, createJob, listModels, listSamplers, setApiKey } from "./api.js";
import { clearErrors, fillChoices, jobBody, setupForm, showError } from "./form.js";
import { setupHistory, showHistory } from "./history.js";
import { trackJob } from "./jobs.js";

const $ = (id) => document.getElementById(id);

// Any API error: a 401 asks for the key; one naming a field is shown next to that field.
function report(error) {
  if (error instanceof ApiError && error.status === 401) {
    askForKey(apiKey() ? "That key was refused." : "");
    return;
  }
  showError(error.field || null, error.message);
}

function askForKey(message) {
  $("auth").hidden = false;
  $("auth-message").textContent = message;
  $("api-key").focus();
}

// The textual inversions and LoRAs the chosen model's prompts can name (sdgen serve
// --embeddings, --lora-dir); a model not loaded yet lists none.
function showEmbeddings(models) {
  const chosen = models.find((model) => model.name === $("model").value);
  const names = chosen?.embeddings || [];
  $("embeddings-hint").hidden = names.length === 0;
  $("embeddings-hint").textContent = `Embeddings prompts can name: ${names.join(", ")}`;
  const loras = chosen?.loras || [];
  $("loras-hint").hidden = loras.length === 0;
  $("loras-hint").textContent = `LoRAs prompts can name as <lora:name:weight>: ${loras.join(", ")}`;
}

async function loadChoices() {
  const [models, samplers] = await Promise.all([listModels(), listSamplers()]);
  const preferred = models.find((model) => model.default)?.name;
  fillChoices(
    $("model"),
    models.map((model) => ({ value: model.name, text: model.name })),
    preferred,
  );
  showEmbeddings(models);
  $("model").onchange = () => showEmbeddings(models);
  fillChoices(
    $("sampler"),
    samplers.map((sampler) => ({ value: sampler.name, text: sampler.a1111_name })),
    $("sampler").value,
  );
}

async function start() {
  $("forget-key").hidden = !apiKey();
  try {
    await loadChoices();
    await showHistory(0);
    $("auth").hidden = true;
    document.body.dataset.ready = "true"; // for tests and scripts: the choices are loaded
  } catch (error) {
    report(error);
  }
}

async function generate(event) {
  event.preventDefault();
  clearErrors();
  const button = $("generate-button");
  button.disabled = true;
  let job;
  try {
    job = await createJob(jobBody());
  } catch (error) {
    report(error);
    return;
  } finally {
    button.disabled = false;
  }
  showHistory().catch(report);
  await trackJob(job, { onEnd: () => showHistory().catch(report) });
}

setupForm();
setupHistory(report);
$("job-form").addEventListener("submit", generate);
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("api-key").value.trim());
  $("api-key").value = "";
  start();
});
$("forget-key").addEventListener("click", () => {
  setApiKey("");
  start();
});
start();

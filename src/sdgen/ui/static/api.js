// The HTTP API (/v1), as the page uses it: every call sends the API key, when one is set, as
// "Authorization: Bearer KEY". Job events are read with fetch streaming rather than EventSource,
// because EventSource cannot send that header (and the server takes the key from headers only).

const KEY_STORAGE = "sdgen.apiKey"; // sessionStorage: this tab only, gone when it closes

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

// An answer other than 2xx: `kind`, `field` and `message` come from the API's error body.
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.kind = error.kind || "http";
    this.field = error.field || null;
  }
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function send(method, path, { body, signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (body !== undefined) {
    init.headers = headers({ "Content-Type": "application/json" });
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await errorOf(response);
  return response;
}

async function errorOf(response) {
  let error = { message: `${response.status} ${response.statusText}` };
  try {
    const body = await response.json();
    if (body && body.error) error = body.error;
    else if (body && body.detail) error = { message: String(body.detail) };
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, error);
}

const json = async (response) => response.json();

export const listModels = () => send("GET", "/v1/models").then(json);
export const listSamplers = () => send("GET", "/v1/samplers").then(json);
export const createJob = (body) => send("POST", "/v1/jobs", { body }).then(json);
export const getJob = (id) => send("GET", `/v1/jobs/${encodeURIComponent(id)}`).then(json);
export const cancelJob = (id) => send("DELETE", `/v1/jobs/${encodeURIComponent(id)}`).then(json);
export const stopJob = (id) => send("POST", `/v1/jobs/${encodeURIComponent(id)}/stop`).then(json);

export function listJobs({ status = "", limit = 10, offset = 0 } = {}) {
  const query = new URLSearchParams({ limit: String(limit), offset: String(offset) });
  if (status) query.set("status", status);
  return send("GET", `/v1/jobs?${query}`).then(json);
}

// A picture as a Blob: <img src> cannot send the API key, so pictures are fetched and shown
// through object URLs (the same way with and without a key).
export async function fetchImage(url) {
  const response = await send("GET", url);
  return response.blob();
}

// Follows a job's server-sent events (GET events_url) until its one `end` event, calling
// onEvent(kind, data) for each; resolves with the job of the `end` event. A dropped connection
// is reopened (the server sends the current state first again) a few times before giving up.
export async function followJob(job, onEvent, { signal, retries = 5 } = {}) {
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await send("GET", job.events_url, { signal });
      const end = await readEvents(response.body, onEvent);
      if (end) return end;
    } catch (error) {
      if (signal?.aborted || (error instanceof ApiError && error.status < 500)) throw error;
      if (attempt >= retries) throw error;
    }
    if (attempt >= retries) return getJob(job.id);
    await new Promise((resolve) => setTimeout(resolve, 500 * (attempt + 1)));
  }
}

// The text/event-stream format: events separated by a blank line, "event:" and "data:" lines,
// ":" comments (keep-alives) ignored.
async function readEvents(stream, onEvent) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      buffer += value.replace(/\r\n?/g, "\n");
      let boundary;
      while ((boundary = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary + 2);
        const event = parseEvent(block);
        if (!event) continue;
        onEvent(event.kind, event.data);
        if (event.kind === "end") return event.data;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseEvent(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (name === "event") kind = value;
    else if (name === "data") data.push(value);
  }
  if (!data.length) return null;
  return { kind, data: JSON.parse(data.join("\n")) };
}

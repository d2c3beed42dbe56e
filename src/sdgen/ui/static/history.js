// The job store's history (GET /v1/jobs, newest first), a page at a time, filtered by status.

import { listJobs } from "./api.js";
import { renderResult } from "./results.js";

const PAGE = 10;
const $ = (id) => document.getElementById(id);
let offset = 0;

export async function showHistory(newOffset = offset) {
  const page = await listJobs({ status: $("history-status").value, limit: PAGE, offset: newOffset });
  offset = newOffset;
  const list = $("history-list");
  for (const img of list.querySelectorAll("img[src^='blob:']")) URL.revokeObjectURL(img.src);
  list.replaceChildren(...page.jobs.map(renderJob));
  const last = page.offset + page.jobs.length;
  $("history-range").textContent = page.total
    ? `${page.offset + 1}–${last} of ${page.total}`
    : "no jobs yet";
  $("history-newer").disabled = page.offset === 0;
  $("history-older").disabled = page.next_offset === null;
}

function renderJob(job) {
  const item = document.createElement("li");
  item.className = "history-job";
  item.dataset.jobId = job.id;
  item.dataset.status = job.status;
  const when = new Date(job.created_at * 1000).toLocaleString();
  const prompt = [].concat(job.request.prompt ?? "").join(" | ");
  const line = document.createElement("p");
  const status = document.createElement("strong");
  status.textContent = job.status;
  line.append(status, ` ${when} “${prompt}”`);
  if (job.error) line.append(` — ${job.error.message}`);
  item.append(line);
  if (job.results.length) {
    const results = document.createElement("ul");
    results.className = "cards small";
    results.append(...job.results.map((image) => renderResult(job, image)));
    item.append(results);
  }
  return item;
}

export function setupHistory(report) {
  const run = (promise) => promise.catch(report);
  $("history-refresh").addEventListener("click", () => run(showHistory()));
  $("history-status").addEventListener("change", () => run(showHistory(0)));
  $("history-newer").addEventListener("click", () => run(showHistory(Math.max(0, offset - PAGE))));
  $("history-older").addEventListener("click", () => run(showHistory(offset + PAGE)));
}

// A submitted job as a card: status, a progress bar and the latest preview from its events,
// Stop (while it runs: end now, keep the pictures predicted so far) and Cancel. When the job
// ends its pictures go to the gallery.

import { cancelJob, followJob, stopJob } from "./api.js";
import { renderResult } from "./results.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled", "interrupted"]);

// Shows `job` (as POST /v1/jobs answered it) and follows it; resolves with the final job.
export async function trackJob(job, { onEnd } = {}) {
  const card = document.getElementById("job-template").content.firstElementChild.cloneNode(true);
  card.dataset.jobId = job.id;
  const status = card.querySelector(".job-status");
  const bar = card.querySelector(".job-progress");
  const preview = card.querySelector(".job-preview");
  const cancel = card.querySelector(".job-cancel");
  const stop = card.querySelector(".job-stop");
  const prompt = [].concat(job.request.prompt).join(" | ");
  card.querySelector(".job-prompt").textContent = prompt ? `“${prompt}”` : "(no prompt)";
  bar.setAttribute("aria-label", `progress of “${prompt}”`);
  cancel.setAttribute("aria-label", `Cancel “${prompt}”`);
  stop.setAttribute("aria-label", `Stop “${prompt}” and keep its pictures`);
  document.getElementById("jobs").prepend(card);

  const showProgress = (progress) => {
    if (progress.total) {
      bar.value = progress.fraction;
      bar.textContent = `${Math.round(progress.fraction * 100)}%`;
      card.dataset.step = `${progress.step}/${progress.total}`;
    }
    if (progress.preview) {
      preview.src = `data:image/png;base64,${progress.preview}`;
      preview.hidden = false;
    }
  };
  const showJob = (current) => {
    // An answer to Cancel or Stop, made while the job still ran, can arrive after the job's
    // end event: an ended job never goes back to an earlier state.
    if (TERMINAL.has(card.dataset.status) && !TERMINAL.has(current.status)) return;
    status.textContent = current.status;
    card.dataset.status = current.status;
    stop.hidden = current.status !== "running"; // a queued job has no pictures to keep yet
    if (current.status === "queued" && current.queue_position) {
      status.textContent = `queued (#${current.queue_position})`;
    }
    showProgress(current.progress);
  };
  showJob(job);

  // Cancel and Stop: ask the server, show the job as it answers, or the error.
  const onClick = (button, ask) =>
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        showJob(await ask(job.id));
      } catch (error) {
        card.querySelector(".job-error").textContent = error.message;
        button.disabled = false;
      }
    });
  onClick(cancel, cancelJob);
  onClick(stop, stopJob);

  let final = job;
  try {
    final = await followJob(job, (kind, data) => {
      if (kind === "progress") showProgress(data);
      else showJob(data);
    });
  } catch (error) {
    card.querySelector(".job-error").textContent = `lost the job's events: ${error.message}`;
    return job;
  }
  showJob(final);
  if (TERMINAL.has(final.status)) {
    cancel.hidden = true;
    stop.hidden = true;
    if (final.error) card.querySelector(".job-error").textContent = final.error.message;
    if (final.status === "succeeded") {
      bar.value = 1;
      preview.hidden = true; // the picture itself is in the gallery
      const gallery = document.getElementById("gallery");
      for (const image of [...final.results].reverse()) gallery.prepend(renderResult(final, image));
    }
  }
  onEnd?.(final);
  return final;
}

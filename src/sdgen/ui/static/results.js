// One generated picture as a card: the picture, its settings, Download, Reuse seed and Use as
// init picture. Used by the gallery and by the history.

import { fetchImage } from "./api.js";
import { setSeed, useInitPicture } from "./form.js";

// "a red circle · seed 7 · 64×64 · 20 steps · guidance 7.5 · euler · img2img, strength 0.5"
export function settingsText(request, image) {
  const parts = [request.prompt && `“${[].concat(request.prompt).join(" | ")}”`];
  if (request.negative_prompt && String(request.negative_prompt)) {
    parts.push(`not “${[].concat(request.negative_prompt).join(" | ")}”`);
  }
  parts.push(`seed ${image.seed}`, `${image.width}×${image.height}`);
  parts.push(`${request.steps} steps`, `guidance ${request.guidance_scale}`);
  if (request.sampler) parts.push(request.sampler);
  if (request.model) parts.push(request.model);
  if (request.init_image) {
    parts.push(`${request.mask ? "inpainting" : "img2img"}, strength ${request.strength}`);
  }
  if (request.variation_strength > 0) {
    const variation = variationSeed(request, image);
    parts.push(`variation seed ${variation}, strength ${request.variation_strength}`);
  }
  if (request.tiling) parts.push("tiling");
  if (request.seed_resize_from) {
    parts.push(`seed resized from ${request.seed_resize_from.join("×")}`);
  }
  if (request.hires) {
    // the picture's own size is shown above: the first pass's here
    const { steps, strength, upscaler } = request.hires;
    parts.push(`hires fix from ${request.width}×${request.height}, ${upscaler}, ` +
      `${steps || request.steps} steps, strength ${strength}`);
  }
  // A stopped job's picture is the prediction at that step (its metadata says which).
  const stopped = /Stopped at step: (\d+\/\d+)/.exec(image.parameters || "");
  if (stopped) parts.push(`stopped at step ${stopped[1]}`);
  return parts.filter(Boolean).join(" · ");
}

// Picture i has seed + i and variation seed + i: its own variation seed, from its seed.
function variationSeed(request, image) {
  return request.variation_seed + (image.seed - request.seed);
}

export function renderResult(job, image) {
  const card = document.getElementById("result-template").content.firstElementChild.cloneNode(true);
  card.dataset.imageId = image.id;
  card.dataset.jobId = job.id;
  card.dataset.seed = String(image.seed);
  const settings = settingsText(job.request, image);
  const img = card.querySelector(".result-image");
  img.alt = `generated picture: ${settings}`;
  img.width = image.width;
  img.height = image.height;
  card.querySelector(".result-settings").textContent = settings;
  const download = card.querySelector(".result-download");
  download.download = `sdgen-${image.id}.png`;
  download.setAttribute("aria-label", `Download picture, seed ${image.seed}`);
  const reuse = card.querySelector(".result-reuse-seed");
  reuse.setAttribute("aria-label", `Reuse seed ${image.seed}`);
  const varied = job.request.variation_strength > 0;
  const resizeFrom = job.request.seed_resize_from ?? null;
  reuse.addEventListener("click", () =>
    varied
      ? setSeed(
          image.seed,
          variationSeed(job.request, image),
          job.request.variation_strength,
          resizeFrom,
        )
      : setSeed(image.seed, null, null, resizeFrom),
  );
  const useInit = card.querySelector(".result-use-init");
  useInit.setAttribute("aria-label", `Use picture with seed ${image.seed} as init picture`);

  const blob = fetchImage(image.url).then((data) => {
    const url = URL.createObjectURL(data);
    img.src = url;
    download.href = url;
    return data;
  });
  blob.catch((error) => {
    card.querySelector(".result-settings").textContent = `${settings} (not loaded: ${error.message})`;
  });
  useInit.addEventListener("click", async () => {
    await useInitPicture(await blob);
    document.getElementById("strength").focus();
  });
  return card;
}

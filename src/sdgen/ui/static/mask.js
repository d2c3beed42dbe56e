// The mask painter: the init picture shown fitted into a 256-pixel box, with a canvas over it on
// which the pointer (mouse, pen or touch) paints. The mask itself is kept on an offscreen canvas
// at the init picture's own pixel size, white strokes on black (the API's white = repaint), so it
// always has the init picture's size, whatever the size it is shown at. Strokes are drawn in the
// picture's coordinates on both canvases; the visible one is drawn opaque and shown at half
// opacity, so that overlapping strokes do not darken and the picture stays visible.

const DISPLAY_BOX = 256; // CSS pixels: the longer side of the shown picture
const STROKE_COLOUR = "#ff2d55";

const $ = (id) => document.getElementById(id);

let mask = null; // the offscreen canvas, at the init picture's size, or null without a picture
let painted = false; // a stroke since the last clear: the job is inpainting
let last = null; // the pointer's previous point (picture coordinates) while painting

// The mask as a PNG data URL, or null when nothing is painted (the job is then img2img).
export function maskPicture() {
  return mask && painted ? mask.toDataURL("image/png") : null;
}

// Starts a blank mask for `image` (a decoded <img>), or none when `image` is null.
export function resetMask(image) {
  mask = null;
  if (image) {
    const { naturalWidth: width, naturalHeight: height } = image;
    mask = document.createElement("canvas");
    mask.width = width;
    mask.height = height;
    const scale = Math.min(DISPLAY_BOX / width, DISPLAY_BOX / height);
    const shown = { width: Math.round(width * scale), height: Math.round(height * scale) };
    for (const element of [image, $("mask-canvas")]) {
      element.style.width = `${shown.width}px`;
      element.style.height = `${shown.height}px`;
    }
    const canvas = $("mask-canvas");
    canvas.width = Math.round(shown.width * devicePixelRatio); // sharp strokes on dense screens
    canvas.height = Math.round(shown.height * devicePixelRatio);
  }
  clearMask();
}

export function clearMask() {
  painted = false;
  last = null;
  if (mask) {
    const context = mask.getContext("2d");
    context.fillStyle = "black";
    context.fillRect(0, 0, mask.width, mask.height);
  }
  const canvas = $("mask-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  showOptions();
}

// The mask options and "Clear mask" are usable only with a painted mask.
function showOptions() {
  $("mask-options").hidden = !painted;
  $("mask-options").disabled = !painted;
  $("mask-clear").disabled = !painted;
}

// The pointer's position in the picture's pixels (x right, y down).
function pointOf(event) {
  const rect = event.currentTarget.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) * mask.width) / rect.width,
    y: ((event.clientY - rect.top) * mask.height) / rect.height,
  };
}

// The brush size is in CSS pixels on screen; in the picture's pixels it scales with the display.
function brushWidth(canvas) {
  return (Number($("brush-size").value) * mask.width) / canvas.getBoundingClientRect().width;
}

// A round-capped segment from `from` to `to`, in picture coordinates. The disc at `to` makes a
// click or a tap a dot: canvas drops a zero-length segment, round caps and all.
function stroke(context, colour, from, to, width) {
  context.strokeStyle = context.fillStyle = colour;
  context.lineCap = "round";
  context.lineWidth = width;
  context.beginPath();
  context.moveTo(from.x, from.y);
  context.lineTo(to.x, to.y);
  context.stroke();
  context.beginPath();
  context.arc(to.x, to.y, width / 2, 0, 2 * Math.PI);
  context.fill();
}

function paint(canvas, to) {
  const from = last || to;
  const width = brushWidth(canvas);
  const shown = canvas.getContext("2d");
  shown.setTransform(canvas.width / mask.width, 0, 0, canvas.height / mask.height, 0, 0);
  stroke(shown, STROKE_COLOUR, from, to, width);
  stroke(mask.getContext("2d"), "white", from, to, width);
  last = to;
  if (!painted) {
    painted = true;
    showOptions();
  }
}

export function setupMaskPainter() {
  const canvas = $("mask-canvas");
  canvas.addEventListener("pointerdown", (event) => {
    if (!mask || event.button !== 0) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId); // keeps the stroke when it leaves the canvas
    last = null;
    paint(canvas, pointOf(event));
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!mask || !canvas.hasPointerCapture(event.pointerId)) return;
    paint(canvas, pointOf(event));
  });
  const end = () => (last = null);
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  $("mask-clear").addEventListener("click", clearMask);
  $("only-masked").addEventListener("change", (event) => {
    $("padding_mask_crop").disabled = !event.target.checked;
  });
}

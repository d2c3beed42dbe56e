"""The denoising as pictures and videos: a step callback that keeps frames, and their writers.

``StepFrames`` is a step callback: inside the loop it only copies one image's latents to the CPU
(no decoding, so the run is not slowed). After the run, ``pictures`` turns them into pictures,
either through the VAE (preview "x0": the predicted clean picture, decoded exactly as the final
picture is) or through a fitted linear map (preview "latents": the current noisy latents, fast).
``write_video`` writes .mp4 (H.264 through PyAV, the ``video`` extra), .gif or .webp (Pillow);
``save_frames`` writes numbered PNGs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from weakref import WeakKeyDictionary

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sdgen.errors import InvalidRequest, SdgenError
from sdgen.media.images import decode_latents, tensor_to_pil
from sdgen.models.loaded import LoadedModel
from sdgen.sampling.loop import Step

VIDEO_SUFFIXES = (".mp4", ".gif", ".webp")
PYAV_MISSING = 'writing an .mp4 video needs PyAV: pip install "sdgen[video]"'

# What a frame shows: which tensor of a Step is kept.
PREVIEWS: dict[str, Callable[[Step], torch.Tensor]] = {
    "x0": lambda step: step.denoised,  # the predicted clean latents: a picture from step 1
    "latents": lambda step: step.latents,  # the current latents: noise fading into a picture
}


def check_video_path(path: Path) -> None:
    """Refuse a ``--save-steps`` path the writers cannot write, before any generation runs."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise InvalidRequest("save_steps", str(path), "a path ending in .mp4, .gif or .webp")
    if suffix == ".mp4" and importlib.util.find_spec("av") is None:  # looks, does not import
        raise SdgenError(PYAV_MISSING)


class StepFrames:
    """A step callback that keeps image ``image_index``'s latents every ``every`` steps.

    A step is kept when ``(index + 1) % every == 0``, and the last step always, so the video ends
    on the final picture (x0) or the final latents. Inside the loop it only copies one image's
    (C, h, w) tensor to the CPU; ``pictures`` decodes them after the run.
    """

    def __init__(self, every: int = 1, preview: str = "x0", image_index: int = 0):
        if every < 1:
            raise InvalidRequest("every", every, "a whole number of steps, 1 or more")
        if preview not in PREVIEWS:
            raise InvalidRequest("preview", preview, f"one of {', '.join(PREVIEWS)}")
        self.every, self.preview, self.image_index = every, preview, image_index
        self.indices: list[int] = []  # the 0-based steps kept, in order
        self.tensors: list[torch.Tensor] = []  # their (C, h, w) latents, on the CPU

    def __call__(self, step: Step) -> None:
        if (step.index + 1) % self.every != 0 and step.index != step.total - 1:
            return
        latents = PREVIEWS[self.preview](step)[self.image_index]  # (C, h, w) on the model's device
        # copy=True: on a CPU model .to("cpu") would alias a tensor the scheduler may reuse.
        self.tensors.append(latents.detach().to("cpu", copy=True))
        self.indices.append(step.index)

    def pictures(self, model: LoadedModel, vae: torch.nn.Module | None = None) -> list[Image.Image]:
        """The kept steps as pictures of their pass's size (a hires fix's second pass is
        larger), in step order; x0 previews decoded by ``vae`` (default the model's: a tiled
        request's is its circular copy)."""
        pictures: list[Image.Image] = []
        start = 0
        while start < len(self.tensors):  # each run of one latent shape at once
            shape = self.tensors[start].shape
            end = start
            while end < len(self.tensors) and self.tensors[end].shape == shape:
                end += 1
            latents = torch.stack(self.tensors[start:end])  # (N, C, h, w)
            if self.preview == "x0":
                pictures += decode_latents(vae or model.vae, latents.to(model.device))
            else:
                pictures += approximate_pictures(model, latents)
            start = end
        return pictures


@torch.no_grad()
def approximate_pictures(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    """(N, C, h, w) latents -> N pictures of (h*f, w*f) by the model's linear latent-to-RGB map.

    A cheap preview instead of a VAE decode: each latent cell becomes one colour, then the
    (h, w) colour grid is upsampled bilinearly to the output size. Blurry by design, and only as
    good as a linear map can be: on the miniature model it correlates about 0.65 with the VAE
    decode; a random VAE's decoder has no linear relation to its encoder at all. Early latents of
    sigma samplers (Euler, DPM++) are x0 + sigma * noise with sigma up to ~15: mostly clamped noise.
    """
    weights = latent_rgb_map(model.vae).to(torch.float32)  # (C + 1, 3)
    latents = latents.to(torch.float32)
    rgb = torch.einsum("nchw,ck->nkhw", latents, weights[:-1])  # (N, 3, h, w)
    rgb = rgb + weights[-1].view(1, 3, 1, 1)
    scale = model.vae_scale_factor
    rgb = F.interpolate(rgb, scale_factor=scale, mode="bilinear", align_corners=False)
    return tensor_to_pil(rgb.clamp(-1, 1))  # (N, 3, h*f, w*f) in [-1, 1]


# One fitted map per VAE object. Keyed weakly by the VAE itself, so an entry lives exactly as long
# as its model and two models never share one; the map depends on nothing but that VAE's weights
# (a VAE whose weights are changed in place keeps its old map).
_LATENT_RGB_MAPS: WeakKeyDictionary[torch.nn.Module, torch.Tensor] = WeakKeyDictionary()


def latent_rgb_map(vae: torch.nn.Module) -> torch.Tensor:
    """The (C + 1, 3) least-squares map from [latent cell, 1] to its pixels' mean RGB in [-1, 1].

    Computed once per VAE object and then reused; see ``fit_latent_rgb_map``.
    """
    weights = _LATENT_RGB_MAPS.get(vae)
    if weights is None:
        weights = fit_latent_rgb_map(vae)
        _LATENT_RGB_MAPS[vae] = weights
    return weights


@torch.no_grad()
def fit_latent_rgb_map(
    vae: torch.nn.Module, num_pictures: int = 8, cells: int = 16
) -> torch.Tensor:
    """Fit the latent-to-RGB map of ``vae`` by least squares on pictures it encodes itself.

    Why fitted: the hand-made 4x3 matrices in circulation (A1111's "Approx cheap") belong to SD
    1.x/2.x's VAE; any other VAE (fine-tuned VAEs, the miniature model, the random test models)
    has its own latent space. Encoding a few pictures tells us that space for any VAE:

    1. ``num_pictures`` deterministic synthetic pictures of (cells*f)^2 pixels: smooth colour
       fields (bilinear) and flat colour patches with hard edges (nearest), from a seeded local
       generator, covering the colour cube; never the global RNG.
    2. Encode them to the posterior means, scaled by the VAE's scaling factor: the space the UNet
       works in and ``Step`` tensors are in. (N, C, cells, cells)
    3. Average-pool the pictures by f to one RGB per latent cell. (N, 3, cells, cells)
    4. Solve [latents, 1] @ W = rgb over all cells in float64: W is (C + 1, 3).

    Cost: one encoder pass over 8 pictures of 16f x 16f (128 x 128 for SD): far less than one
    VAE decode of a 512 x 512 picture.
    """
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    side = cells * scale
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(num_pictures, 3, 4, 4, generator=generator) * 2 - 1  # in [-1, 1]
    half = num_pictures // 2
    pixels = torch.cat(
        [
            F.interpolate(corners[:half], size=side, mode="bilinear", align_corners=True),
            F.interpolate(corners[half:], size=side, mode="nearest"),
        ]
    )  # (N, 3, side, side)
    device = next(vae.parameters()).device
    posterior = vae.encode(pixels.to(device, vae.dtype)).latent_dist
    latents = posterior.mean.to("cpu", torch.float64) * vae.config.scaling_factor
    rgb = F.avg_pool2d(pixels.to(torch.float64), scale)  # (N, 3, cells, cells)
    inputs = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])  # (N*cells^2, C)
    inputs = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=torch.float64)], dim=1)
    targets = rgb.permute(0, 2, 3, 1).reshape(-1, 3)  # (N*cells^2, 3)
    return torch.linalg.lstsq(inputs, targets).solution.to(torch.float32)  # (C + 1, 3)


def write_video(frames: list[Image.Image], path: Path, fps: int = 8) -> Path:
    """Write ``frames`` as an .mp4, .gif or .webp video (by ``path``'s suffix); return ``path``.

    Args:
        frames: pictures in order; frames smaller than the last (a hires fix's first pass)
            are resized to its size.
        path: where to write; its folder is created. An existing file is replaced.
        fps: frames per second.
    Returns:
        ``path``.
    """
    check_video_path(path)
    if not frames:
        raise ValueError("write_video: no frames to write")
    if fps < 1:
        raise InvalidRequest("fps", fps, "a whole number of frames per second, 1 or more")
    size = frames[-1].size
    frames = [f if f.size == size else f.resize(size, Image.Resampling.LANCZOS) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    WRITERS[path.suffix.lower()](frames, path, fps)
    return path


# H.264 first (plays everywhere); MPEG-4 part 2 if PyAV's bundled ffmpeg lacks an H.264 encoder.
MP4_CODECS = ("libx264", "libopenh264", "mpeg4")


def _write_mp4(frames: list[Image.Image], path: Path, fps: int) -> None:
    """H.264 in yuv420p, which most players require; yuv420p needs an even width and height."""
    try:
        import av
    except ImportError as err:
        raise SdgenError(PYAV_MISSING) from err
    codec = next((c for c in MP4_CODECS if c in av.codecs_available), None)
    if codec is None:
        raise SdgenError(f"PyAV's ffmpeg has none of the video encoders {', '.join(MP4_CODECS)}")
    pictures = [_even_size(frame.convert("RGB")) for frame in frames]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = pictures[0].size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}  # visually lossless; the default 23 blurs small frames
        for picture in pictures:
            container.mux(stream.encode(av.VideoFrame.from_image(picture)))
        container.mux(stream.encode())  # flush the frames the encoder still holds


def _even_size(picture: Image.Image) -> Image.Image:
    """Pad an odd width or height by one row or column, repeating the edge pixels."""
    width, height = picture.size
    if width % 2 == 0 and height % 2 == 0:
        return picture
    array = np.asarray(picture)
    padded = np.pad(array, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    return Image.fromarray(padded)


def _write_animation(frames: list[Image.Image], path: Path, fps: int) -> None:
    """Animated GIF or WebP through Pillow, looping forever.

    WebP is lossless: lossy WebP (libwebp's animation encoder) merges frames that differ by a
    few levels into one longer frame, which would drop the converging last steps of a denoising.
    Both formats still merge a frame identical to the one before it (GIF: after quantizing to its
    palette) into one longer frame, so the timing stays and the frame count can be smaller.
    Lossless WebP is large for big pictures; .mp4 is the compact format.
    """
    pictures = [frame.convert("RGB") for frame in frames]
    options = {"lossless": True} if path.suffix.lower() == ".webp" else {}
    pictures[0].save(
        path,
        save_all=True,
        append_images=pictures[1:],
        duration=round(1000 / fps),  # milliseconds per frame
        loop=0,
        **options,
    )


WRITERS: dict[str, Callable[[list[Image.Image], Path, int], None]] = {
    ".mp4": _write_mp4,
    ".gif": _write_animation,
    ".webp": _write_animation,
}


def save_frames(frames: list[Image.Image], folder: Path) -> list[Path]:
    """Write ``frames`` as ``folder/step-001.png``, ``step-002.png``, ...; return the paths.

    The folder is created; files of those names already there are replaced.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(len(frames))))
    paths = []
    for number, frame in enumerate(frames, start=1):
        path = folder / f"step-{number:0{digits}d}.png"
        frame.save(path)
        paths.append(path)
    return paths

"""Pictures per second of one request spread over 1..N devices (``--devices``), same run.

    python benchmarks/devices_throughput.py --devices cuda:0,cuda:1,cuda:2,cuda:3 [--images 64]
    python benchmarks/devices_throughput.py --devices cpu,cpu --images 8   # these machines

For each prefix of the device list (1 device, 2, ... all) it generates the same request with
the embedded model (or ``--model``), compares the pictures with the one-device run's (max pixel
difference), and prints pictures per second and the speed-up. Writes JSON to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sdgen.engine.devices import generate_on_devices, load_on_devices, parse_devices
from sdgen.models.loader import load_model
from sdgen.params import GenerationRequest

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", required=True)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    devices = parse_devices(args.devices)
    request = GenerationRequest("a red circle on a blue background", num_images=args.images,
                                steps=args.steps, seed=0)  # fmt: skip
    models = load_on_devices(devices, lambda device: load_model(args.model, device=device))
    rows, reference = [], None
    for count in range(1, len(devices) + 1):
        generate_on_devices(request.replace(num_images=count), models[:count])  # warm-up
        started = time.perf_counter()
        result = generate_on_devices(request, models[:count])
        seconds = time.perf_counter() - started
        pictures = [np.asarray(image, dtype=np.int16) for image in result.images]
        reference = reference or pictures
        # Equal up to batch-size-dependent kernels (each device runs a smaller batch): 0 or 1.
        diff = max(int(np.abs(a - b).max()) for a, b in zip(pictures, reference, strict=True))
        rows.append({"devices": devices[:count], "seconds": round(seconds, 3),
                     "pictures_per_second": round(args.images / seconds, 3),
                     "max_pixel_diff_to_one_device": diff})  # fmt: skip
        print(json.dumps(rows[-1]))
    base = rows[0]["pictures_per_second"]
    for row in rows:
        row["speedup"] = round(row["pictures_per_second"] / base, 2)
    out = {
        "benchmark": "devices_throughput",
        "machine": platform.processor() or platform.machine(),
        "cpu_count": torch.get_num_threads(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch": torch.__version__,
        "settings": {"images": args.images, "steps": args.steps, "model": args.model or "embedded"},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    name = "devices_throughput-" + "-".join(d.replace(":", "") for d in devices) + ".json"
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")
    print(f"written: {RESULTS / name}")


if __name__ == "__main__":
    main()

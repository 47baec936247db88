"""Per-image costs of the zoo: shapes generation and one training step of each model, on CPU.

    python benchmarks/train_zoo.py [--steps 10] [--batch 64]

Prints milliseconds per image, so a full training time can be estimated as
``images per epoch x epochs x ms/img`` without running it (useful when the machine is shared and wall times drift).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from models_zoo import ZOO, shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    start = time.perf_counter()
    shapes.generate(1000, seed=0)
    print(f"shapes generation: {(time.perf_counter() - start):.3f} ms/img (1000 images)")

    torch.manual_seed(0)
    for name, entry in ZOO.items():
        model = entry.build_model().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        if entry.kind == "points":
            x = torch.randn(args.batch, 2)
        else:
            x = torch.randn(args.batch, entry.channels, *entry.input_size)
        y = torch.randint(0, len(entry.class_names), (args.batch,))
        for step in range(args.steps + 2):
            if step == 2:  # two warm-up steps: first calls allocate and pick kernels
                start = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        per_img = (time.perf_counter() - start) / (args.steps * args.batch) * 1000
        print(f"{name:14s} train step: {per_img:.3f} ms/img (batch {args.batch})")


if __name__ == "__main__":
    main()

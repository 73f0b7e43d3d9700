"""``resnets export``: ONNX (dynamic batch, optionally int8), TorchScript, Triton or Keras, checked before it is kept."""

from __future__ import annotations

import argparse

from .predict import add_weights_args, loaded_weights


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export to ONNX (optionally int8), TorchScript, Triton or Keras, "
                              "checked")
    from ..infer.quantize import (  # imports torch
        CALIBRATION_IMAGES,
        CHECK_IMAGES,
        MAX_REL_ERROR,
        MIN_AGREEMENT,
    )

    add_weights_args(p)
    p.add_argument("--format", choices=("onnx", "torchscript", "triton", "keras"), default="onnx",
                   help="output format: onnx, torchscript, triton (a Triton Inference Server model repository "
                        "folder) or keras (a .keras file)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="output file, replaced if it exists (default: beside the weights, .onnx / .int8.onnx / "
                        ".torchscript.pt, never replaced without --force); triton: the repository folder "
                        "(default <weights stem>-triton/; replaced only if resnets wrote it)")
    p.add_argument("--force", action="store_true", help="replace the default-named output file if it exists")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    k = p.add_argument_group("keras (what the .keras model takes and returns)")
    k.add_argument("--keras-preprocessing", choices=("none", "caffe", "tf", "torch"), default="none",
                   help="the input it takes: none (default), the resnets weights' normalised input; or "
                        "keras.applications' preprocess_input mode: caffe (BGR, ImageNet means on 0..255), tf "
                        "(-1..1), torch (ImageNet mean/std), e.g. caffe for a pipeline built for keras ResNet50")
    k.add_argument("--softmax", action="store_true",
                   help="end in a softmax: return probabilities, as a Keras classifier does (default: logits)")
    q = p.add_argument_group("int8 (onnxruntime static quantisation, checked on real images)")
    q.add_argument("--int8", action="store_true",
                   help="quantise to int8 (QDQ, per-channel weights), calibrated on real images")
    q.add_argument("--calibration", default=None, metavar="DIR",
                   help="folder of images for calibration and the check (default: the shipped sample)")
    q.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES, metavar="N",
                   help=f"images to calibrate on (default {CALIBRATION_IMAGES})")
    q.add_argument("--check-images", type=int, default=CHECK_IMAGES, metavar="N",
                   help=f"other images to compare with float32 PyTorch (default {CHECK_IMAGES})")
    q.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT, metavar="F",
                   help=f"fail below this top-1 agreement with float32 (default {MIN_AGREEMENT})")
    q.add_argument("--max-rel-error", type=float, default=MAX_REL_ERROR, metavar="F",
                   help=f"fail above this relative logits error (default {MAX_REL_ERROR})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import UserError
    from ..infer.export import ExportCheckError, export

    if args.calibration is not None and not args.int8:
        raise UserError("--calibration needs --int8")
    if args.format != "keras" and (args.keras_preprocessing != "none" or args.softmax):
        raise UserError("--keras-preprocessing and --softmax are for --format keras")
    out = None
    if args.out is not None:  # before the work (a default name beside the weights is export's own choice)
        from ..infer.loading import resolve_weights_path
        from ..outputs import plan_out

        suffixes, what = {"onnx": ((".onnx",), "an ONNX model"), "torchscript": ((".pt",), "a TorchScript model"),
                          "keras": ((".keras",), "a Keras model"), "triton": ((), "")}[args.format]
        out = plan_out(args.out, folder=args.format == "triton", suffixes=suffixes, what=what,
                       inputs=[("the --weights file", resolve_weights_path(args.weights, args.model)),
                               ("the --calibration folder", args.calibration)])
    loaded = loaded_weights(args)
    try:
        if args.format == "keras":  # the keras module itself: it takes the contract's options
            from ..keras import export_keras

            result = export_keras(loaded, out=args.out, model_name=args.model, force=args.force,
                                  preprocessing=args.keras_preprocessing, softmax=args.softmax)
        else:
            result = export(loaded, args.format, out=args.out, model_name=args.model, opset=args.opset,
                            int8=args.int8, calibration=args.calibration,
                            calibration_images=args.calibration_images, check_images=args.check_images,
                            min_agreement=args.min_agreement, max_rel_error=args.max_rel_error, force=args.force)
    except ExportCheckError as exc:
        print(f"resnets export: check failed: {exc}", file=sys.stderr)
        return 1
    if out is not None:
        out.say_created()
    if result.int8 is not None:
        f = result.int8
        print(f"wrote {result.path} (int8); calibrated on {result.calibration_images} images from "
              f"{result.image_source}; int8 onnxruntime vs float32 PyTorch on {f.images} other images: "
              f"top-1 agreement {f.top1_agreement:.2%}, logits relative error {f.rel_error:.3g}, "
              f"max abs difference {f.max_abs_diff:.3g} (logits up to {f.max_abs_ref:.3g})")
        return 0
    checker = {"onnx": "onnxruntime", "torchscript": "torch.jit", "triton": "onnxruntime", "keras": "Keras"}[result.format]
    print(f"wrote {result.path}; {checker} vs PyTorch at batch sizes "
          f"{', '.join(map(str, result.batches))}: max abs difference {result.max_abs_diff:.3g} "
          f"({'probabilities' if args.softmax else 'logits'} up to {result.max_abs_ref:.3g})")
    if result.format == "keras":
        from ..keras.write import contract

        print("  " + contract(args.keras_preprocessing, args.softmax, loaded.mean, loaded.std, len(loaded.classes),
                              loaded.input_size))
    return 0

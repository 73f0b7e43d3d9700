"""``resnets --help`` (and ``import resnets``) import no PyTorch (issue 24, point 5): the top-level parser lists
every command by name and help alone, and builds in full only the command that runs."""

from __future__ import annotations

import subprocess
import sys

from resnets.cli import COMMAND_MODULES, build_parser


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_help_imports_no_torch() -> None:
    proc = _run("import contextlib, io, sys, resnets.cli\n"
                "out = io.StringIO()\n"
                "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
                "    resnets.cli.main(['--help'])\n"
                "assert 'torch' not in sys.modules, 'torch imported'\n"
                "print(out.getvalue())")
    assert proc.returncode == 0, proc.stderr
    for name in COMMAND_MODULES:  # every command is still listed, with its help
        assert f"    {name.replace('_', '-')}" in proc.stdout
    assert "train a ResNet" in proc.stdout and "export to ONNX" in proc.stdout


def test_import_resnets_imports_no_torch_until_a_name_is_used() -> None:
    proc = _run("import sys, resnets\n"
                "assert 'torch' not in sys.modules, 'import resnets imported torch'\n"
                "model = resnets.create_model('resnet20')\n"
                "assert 'torch' in sys.modules\n"
                "import resnets.summary\n"  # the submodule's import keeps resnets.summary the function
                "print(callable(resnets.summary), type(resnets.summary).__name__, resnets.list_models()[:1])")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["True", "function"]


def test_a_command_still_gets_its_full_parser() -> None:
    parse = build_parser(only="explain").parse_args
    args = parse(["explain", "--weights", "w.safetensors", "cat.png", "--out", "cam.png"])
    assert (args.weights, args.image, args.out) == ("w.safetensors", "cat.png", "cam.png")
    full = build_parser().parse_args(["train", "--epochs", "2", "--batch-size", "8"])  # every command in full
    assert (full.epochs, full.batch_size) == (2, 8)

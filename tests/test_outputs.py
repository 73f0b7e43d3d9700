"""resnets.outputs.plan_out, the one check every command runs on its --out (issue 24, point 2): never one of the
command's inputs (the same file by any name, nothing inside an input folder, a folder output holding none),
the extension of what is written, and the folder that writing it creates said in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resnets.errors import UserError
from resnets.outputs import plan_out


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"jpeg")
    (tmp_path / "w.safetensors").write_bytes(b"weights")
    return {"root": tmp_path, "photos": tmp_path / "photos", "cat": tmp_path / "photos" / "cat.jpg",
            "weights": tmp_path / "w.safetensors"}


def test_an_input_file_is_refused_by_any_name(files: dict[str, Path]) -> None:
    inputs = [("the --weights file", files["weights"]), ("the image", files["cat"])]
    with pytest.raises(UserError, match=r"^--out .*w.safetensors is the --weights file .*w.safetensors, which"):
        plan_out(files["weights"], inputs=inputs, suffixes=(".safetensors",))
    with pytest.raises(UserError, match="is the --weights file"):  # another spelling of the same path
        plan_out(files["root"] / "photos" / ".." / "w.safetensors", inputs=inputs, suffixes=(".safetensors",))
    link = files["root"] / "link.safetensors"
    link.symlink_to(files["weights"])
    with pytest.raises(UserError, match="is the --weights file"):
        plan_out(link, inputs=inputs, suffixes=(".safetensors",))
    hard = files["root"] / "hard.safetensors"
    os.link(files["weights"], hard)
    with pytest.raises(UserError, match="is the --weights file"):
        plan_out(hard, inputs=inputs, suffixes=(".safetensors",))
    with pytest.raises(UserError, match="is the image"):  # checked before the extension, the worse mistake
        plan_out(files["cat"], inputs=inputs, suffixes=(".png",))
    assert plan_out(files["root"] / "cam.png", inputs=inputs, suffixes=(".png",)).path == files["root"] / "cam.png"


def test_nothing_inside_an_input_folder_and_a_folder_output_holds_no_input(files: dict[str, Path]) -> None:
    photos = [("the input", files["photos"])]
    with pytest.raises(UserError, match="is inside the input .*photos, which this command reads; choose a --out "
                                        "outside it"):
        plan_out(files["photos"] / "index.safetensors", inputs=photos, suffixes=(".safetensors",))
    with pytest.raises(UserError, match="is inside"):
        plan_out(files["photos"] / "new" / "shards", folder=True, inputs=photos)
    with pytest.raises(UserError, match="is the input"):
        plan_out(files["photos"], folder=True, inputs=photos)
    with pytest.raises(UserError, match=r"holds the --weights file"):
        plan_out(files["root"], folder=True, inputs=[("the --weights file", files["weights"])])
    # eval's report beside the weights it scores is its default: allowed where the command says so
    assert plan_out(files["root"], folder=True, inputs=[("the --weights file", files["weights"])],
                    may_hold_inputs=True).path == files["root"]
    # a glob input counts by its matches; names that are no path (sample, cifar10) and None are nobody's file
    with pytest.raises(UserError, match="is the input"):
        plan_out(files["cat"], inputs=[("the input", str(files["photos"] / "*.jpg"))], suffixes=(".jpg",))
    plan_out(files["root"] / "run", folder=True, inputs=[("the --data folder", "sample"), ("the --init", None)])


def test_wrong_extension_is_refused_in_one_line(files: dict[str, Path]) -> None:
    with pytest.raises(UserError, match=r"^--out .*cat.jpg: the Grad-CAM overlay is written as \.png, so the "
                                        r"name must end in \.png \(e.g. .*cat.png\)$"):
        plan_out(files["root"] / "cat.jpg", suffixes=(".png",), what="the Grad-CAM overlay")
    with pytest.raises(UserError, match=r"\.safetensors or \.npz .*\(e.g. .*/W.safetensors\)"):
        plan_out(files["root"] / "W", suffixes=(".safetensors", ".npz"), what="the index")
    assert plan_out(files["root"] / "i.NPZ", suffixes=(".safetensors", ".npz")).creates is None
    with pytest.raises(UserError, match="is a folder; give a file name"):  # a folder: said as such, not its suffix
        plan_out(files["photos"], suffixes=(".png",))


def test_creating_missing_folders_is_said_and_the_check_creates_nothing(files: dict[str, Path]) -> None:
    said: list[str] = []
    planned = plan_out(files["root"] / "a" / "b" / "cam.png", suffixes=(".png",))
    assert planned.creates == files["root"] / "a" / "b" and not (files["root"] / "a").exists()
    planned.say_created(said.append)
    assert said == []  # nothing was created (the work failed, say): nothing said
    (files["root"] / "a" / "b").mkdir(parents=True)
    planned.say_created(said.append)
    assert said == [f"created folder {files['root'] / 'a' / 'b'}"]
    planned = plan_out(files["root"] / "cam.png", suffixes=(".png",))
    assert planned.creates is None

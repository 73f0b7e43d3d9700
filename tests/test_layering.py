"""The package's layers (issue 27, point 5): one home for weights -> ready model (resnets.loading), a weights
file's header read once on the predict path, and no import circle among resnets' modules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

import resnets
import resnets.loading
import resnets.weights
from resnets.cli import main
from resnets.data import extract_sample
from resnets.weights import save_weights

SRC = Path(resnets.__file__).resolve().parent


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = resnets.create_model("resnet20")
    path = tmp_path_factory.mktemp("w") / "r20.safetensors"
    save_weights(model, path, classes=[f"c{i}" for i in range(10)], extra={"trained": {"input_size": 32,
                                                                                        "resize": 36}})
    return path


def _count_header_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every safetensors header read from now on, by path, whichever module calls ``read_header``."""
    reads: list[str] = []
    real = resnets.weights.read_header

    def counting(path: object) -> dict[str, object]:
        reads.append(str(path))
        return real(path)  # type: ignore[arg-type]

    for module in list(sys.modules.values()):  # the function and every name it was imported under
        if getattr(module, "__name__", "").startswith("resnets") and getattr(module, "read_header", None) is real:
            monkeypatch.setattr(module, "read_header", counting)
    return reads


def test_predict_reads_the_weights_header_once(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    image = next(iter(sorted((extract_sample() / "test" / "cat").iterdir())))
    reads = _count_header_reads(monkeypatch)
    assert main(["predict", "--weights", str(weights), str(image), "--topk", "1"]) == 0
    assert reads == [str(weights)], reads  # once: metadata, training sizes and the tensors' check share it
    assert "c" in capsys.readouterr().out
    loaded = resnets.loading.load_for_inference(weights)
    assert (loaded.input_size, loaded.resize) == (32, 36)  # what the one read found is still used
    assert len(reads) == 2


def test_create_model_with_a_weights_file_reads_the_header_once(weights: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _count_header_reads(monkeypatch)
    model = resnets.create_model("resnet20", weights=weights)
    assert reads == [str(weights)]
    assert model.card.classes == [f"c{i}" for i in range(10)]


def test_models_build_fresh_nets_and_create_model_takes_weights_above_them(weights: Path) -> None:
    from resnets.models import create_model as fresh

    with pytest.raises(resnets.UserError, match=r"fresh nets.*resnets\.create_model"):
        fresh("resnet20", weights=str(weights))
    assert resnets.create_model is resnets.loading.create_model
    same = resnets.create_model("resnet20", weights=weights)
    assert torch.equal(same.state_dict()["fc.weight"], resnets.load_model(weights).state_dict()["fc.weight"])


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def import_graph() -> dict[str, set[str]]:
    """resnets' modules -> the resnets modules each imports, anywhere in it (inside functions and under
    TYPE_CHECKING too: a layer is what a module may name, not only what it loads first)."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    modules = {name for name, _ in files}
    graph: dict[str, set[str]] = {}
    for (name, is_package), path in files.items():
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    where = ".".join(base + ([node.module] if node.module else []))
                else:
                    where = node.module or ""
                targets = [f"{where}.{a.name}" if f"{where}.{a.name}" in modules else where for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_models_weights_loading_export_triton_and_keras_form_no_import_circle() -> None:
    graph = import_graph()
    circles = [c for c in cycles(graph) if not all(m.startswith("resnets.data.") for m in c)]  # data/: issue 27
    assert circles == []
    assert "resnets.loading" in graph["resnets.infer.loading"]  # the import graph is read at all
    models = {m for m in graph if m.split(".")[:2] == ["resnets", "models"]}
    assert all(graph[m] <= models | {"resnets.errors"} for m in models)  # fresh nets: nothing above them
    below = models | {m for m in graph if m.startswith("resnets.pretrained")} | {"resnets.weights"}
    assert all(not graph[m] & {"resnets.loading", "resnets.infer.loading"} for m in below)
    assert not any(graph[m] & {"resnets.infer.export"} for m in graph if m.startswith(("resnets.keras",
                                                                                       "resnets.infer.triton")))

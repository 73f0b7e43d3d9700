"""Run metrics: one JSON line per record in ``metrics.jsonl``, the same rows in ``metrics.csv``, optional TensorBoard.

Records are ``{"kind": "step" | "epoch", "step": ..., "epoch": ..., ...}``; the CSV has a fixed set of columns.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

CSV_COLUMNS = ("kind", "epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5",
               "images_per_s", "elapsed_s", "train_size")


class MetricsLogger:
    """Appends records to ``run_dir/metrics.jsonl`` and ``run_dir/metrics.csv`` (and TensorBoard if asked)."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = False, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.jsonl = self.run_dir / "metrics.jsonl"
        self.csv = self.run_dir / "metrics.csv"
        records = read_metrics(self.run_dir) if resume_step is not None else []
        # On resume, forget what was logged after the checkpoint: those steps are run again.
        records = [r for r in records if resume_step is not None and r["step"] <= resume_step]
        self.records: list[dict[str, Any]] = records
        with open(self.jsonl, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
        with open(self.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(records)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from ..errors import UserError

                raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        with open(self.csv, "a", newline="") as fh:
            csv.DictWriter(fh, CSV_COLUMNS, extrasaction="ignore").writerow(record)
        if self.writer is not None:
            prefix = record["kind"]
            for key, value in record.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, int | float):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (a torn last line, from a kill, is dropped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records

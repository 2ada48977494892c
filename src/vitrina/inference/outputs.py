"""Where ``vitrina predict`` writes its rows: CSV or JSONL (a file or standard output), a single
Parquet file, or a folder of ``part-NNNNN.parquet`` shards. Every kind can be resumed.

Rows arrive batch by batch in input order. A text file is flushed after each batch (an
interrupted run leaves whole rows plus perhaps half a line, which resuming drops). Parquet rows
are written as shards, each complete and renamed into place when written (every
:data:`SHARD_ROWS` rows or :data:`SHARD_SECONDS` seconds, and when the run stops), so a crash
loses at most the rows of one shard, which resuming predicts again. A single ``.parquet`` file
collects its shards in a hidden ``.NAME.parts`` folder and is assembled, in order, at the end.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from vitrina.errors import ConfigError, DataError

SHARD_ROWS = 10_000
SHARD_SECONDS = 60.0
TEXT_SUFFIXES = (".csv", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class Columns:
    """What each row holds besides its path and error."""

    classes: list[str]
    top_k: int
    with_uncertain: bool
    with_unknown: bool = False

    def names(self) -> list[str]:
        ranks = [name for i in range(1, self.top_k + 1) for name in (f"label_{i}", f"prob_{i}")]
        return ["path", *ranks, *(["uncertain"] if self.with_uncertain else []),
                *(["unknown", "unknown_score"] if self.with_unknown else []), "error"]


@dataclass
class Scored:
    """One batch of rows: paths in order; for the readable ones (in the same order) their top-k
    class indices and probabilities, uncertain flags and unknown flags and scores."""

    paths: list[str]
    order: np.ndarray
    probs: np.ndarray
    uncertain: np.ndarray | None
    errors: list[str | None]
    unknown: tuple[np.ndarray, np.ndarray] | None = None

    def records(self, columns: Columns) -> Iterator[dict[str, Any]]:
        """One dict per row: path, labels, probs, uncertain, unknown, unknown_score, error (None where absent)."""
        row = 0
        for path, error in zip(self.paths, self.errors):
            record: dict[str, Any] = {"path": path, "labels": None, "probs": None, "uncertain": None,
                                      "unknown": None, "unknown_score": None, "error": error}
            if error is None:
                record["labels"] = [columns.classes[self.order[row, j]] for j in range(columns.top_k)]
                record["probs"] = [float(self.probs[row, j]) for j in range(columns.top_k)]
                if self.uncertain is not None:
                    record["uncertain"] = bool(self.uncertain[row])
                if self.unknown is not None:
                    record["unknown"], record["unknown_score"] = bool(self.unknown[0][row]), float(self.unknown[1][row])
                row += 1
            yield record


class RowWriter:
    """One output: the paths it already holds (to resume), rows appended in order, then closed."""

    def __init__(self, out: Path | None, columns: Columns):
        self.out, self.columns = out, columns

    def completed(self) -> set[str]:
        return set()

    def write(self, batch: Scored) -> None:
        raise NotImplementedError

    def close(self, finished: bool) -> None:
        """``finished``: every input has its row (a single Parquet file is assembled only then)."""


def open_rows(out: str | Path | None, columns: Columns, resume: bool) -> RowWriter:
    """The writer for ``out``: ``.csv``/``.jsonl`` (or None: CSV on standard output), ``.parquet``,
    or a folder (a name ending in ``/`` or an existing folder) of Parquet shards. An existing
    output is continued only with ``resume``."""
    if out is None:
        return TextRows(None, columns, resume)
    text = str(out)
    path = Path(out)
    if text.endswith(("/", os.sep)) or path.is_dir():
        return ParquetShards(path, columns, resume)
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return TextRows(path, columns, resume)
    if suffix in (".parquet", ".pq"):
        return ParquetFile(path, columns, resume)
    raise ConfigError(f"{out}: choose an output ending in .csv, .jsonl or .parquet, or a folder ending in / for Parquet shards")


def _already(out: Path) -> ConfigError:
    return ConfigError(f"{out} already exists; use --resume to continue it, or choose another --out")


# ----------------------------------------------------------------------------- CSV and JSONL
class TextRows(RowWriter):
    """CSV (a header, then one line per row) or JSONL, flushed after every batch."""

    def __init__(self, out: Path | None, columns: Columns, resume: bool):
        super().__init__(out, columns)
        self.jsonl = out is not None and out.suffix.lower() != ".csv"
        self.done: set[str] = set()
        if out is not None and out.exists():
            if not resume:
                raise _already(out)
            _drop_partial_line(out)
            with open(out, newline="", encoding="utf-8") as fh:
                self.done = set(self._jsonl_paths(fh) if self.jsonl else self._csv_paths(fh))
        if out is None:
            self.sink: IO[str] = sys.stdout
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            self.sink = open(out, "a", newline="", encoding="utf-8")
        if not self.jsonl and (out is None or self.sink.tell() == 0):
            self.sink.write(_csv_line(columns.names()))

    def completed(self) -> set[str]:
        return self.done

    def write(self, batch: Scored) -> None:
        encode = self._jsonl if self.jsonl else self._csv
        self.sink.write("".join(encode(record) for record in batch.records(self.columns)))
        self.sink.flush()

    def close(self, finished: bool) -> None:
        if self.sink is not sys.stdout:
            self.sink.close()

    def _csv(self, record: dict[str, Any]) -> str:
        c = self.columns
        ranks: list[str] = [""] * (2 * c.top_k)
        if record["labels"] is not None:
            ranks = [cell for label, prob in zip(record["labels"], record["probs"]) for cell in (label, f"{prob:.6f}")]
        flags = [_cell(record["uncertain"])] if c.with_uncertain else []
        if c.with_unknown:
            score = record["unknown_score"]
            flags += [_cell(record["unknown"]), "" if score is None else f"{score:.6f}"]
        return _csv_line([record["path"], *ranks, *flags, record["error"] or ""])

    def _jsonl(self, record: dict[str, Any]) -> str:
        line: dict[str, Any] = {"path": record["path"], "top": []}
        if record["labels"] is not None:
            line["top"] = [{"label": label, "prob": round(prob, 6)} for label, prob in zip(record["labels"], record["probs"])]
            for key in ("uncertain", "unknown"):
                if record[key] is not None:
                    line[key] = record[key]
            if record["unknown_score"] is not None:
                line["unknown_score"] = round(record["unknown_score"], 6)
        line["error"] = record["error"]
        return json.dumps(line, ensure_ascii=False) + "\n"

    def _csv_paths(self, fh: IO[str]) -> Iterator[str]:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is not None and header != self.columns.names():
            raise ConfigError(f"{fh.name}: its columns ({', '.join(header)}) differ from this run's; "
                              "resume with the same --top-k and model, or choose another --out")
        yield from (cells[0] for cells in reader if cells)

    @staticmethod
    def _jsonl_paths(fh: IO[str]) -> Iterator[str]:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield json.loads(line)["path"]
                except (ValueError, KeyError, TypeError):
                    raise DataError(f"{fh.name}: line {number} is not a prediction row; cannot resume this file") from None


def _cell(flag: bool | None) -> str:
    return "" if flag is None else ("true" if flag else "false")


def _csv_line(cells: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def _drop_partial_line(path: Path) -> None:
    """Cut a half-written last line (an interrupted write) so the file ends after a whole row."""
    with open(path, "rb+") as fh:
        end = fh.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            step = min(65536, position)
            fh.seek(position - step)
            chunk = fh.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = position - step + newline + 1
                break
            position -= step
        else:
            keep = 0
        if keep != end:
            fh.truncate(keep)


# ----------------------------------------------------------------------------- Parquet
def _pyarrow() -> Any:
    try:
        import pyarrow  # lazy: Parquet output is optional (pip install 'vitrina[parquet]')
        import pyarrow.parquet  # noqa: F401 - the submodule, loaded for pq.write_table
    except ImportError:
        raise ConfigError("Parquet output needs pyarrow: pip install 'vitrina[parquet]'") from None
    return pyarrow


class ParquetShards(RowWriter):
    """A folder of ``part-NNNNN.parquet`` files, numbered in input order, each complete once it appears."""

    def __init__(self, out: Path, columns: Columns, resume: bool):
        super().__init__(out, columns)
        self.pa = _pyarrow()
        self.schema = self._schema()
        self.folder = out
        parts = self.parts()
        if parts and not resume:
            raise ConfigError(f"{out} already holds {len(parts)} part files; use --resume to continue, or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob("part-*.parquet.tmp"):  # a shard being written when the run stopped
            stale.unlink()
        self.done = {path for part in parts for path in self._paths_of(part)}
        self.next_number = 1 + max((int(p.name[5:10]) for p in parts), default=-1)
        self.buffer: list[dict[str, Any]] = []
        self.last_write = time.monotonic()

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-[0-9][0-9][0-9][0-9][0-9].parquet")) if self.folder.is_dir() else []

    def completed(self) -> set[str]:
        return self.done

    def write(self, batch: Scored) -> None:
        self.buffer.extend(batch.records(self.columns))
        if len(self.buffer) >= SHARD_ROWS or time.monotonic() - self.last_write >= SHARD_SECONDS:
            self._write_shard()

    def close(self, finished: bool) -> None:
        self._write_shard()

    def _write_shard(self) -> None:
        if not self.buffer:
            return
        target = self.folder / f"part-{self.next_number:05d}.parquet"
        temporary = target.with_name(target.name + ".tmp")
        self.pa.parquet.write_table(self._table(self.buffer), temporary)
        os.replace(temporary, target)
        self.next_number += 1
        self.buffer = []
        self.last_write = time.monotonic()

    def _schema(self) -> Any:
        pa, c = self.pa, self.columns
        fields = [pa.field("path", pa.string())]
        for i in range(1, c.top_k + 1):
            fields += [pa.field(f"label_{i}", pa.string()), pa.field(f"prob_{i}", pa.float32())]
        if c.with_uncertain:
            fields.append(pa.field("uncertain", pa.bool_()))
        if c.with_unknown:
            fields += [pa.field("unknown", pa.bool_()), pa.field("unknown_score", pa.float32())]
        return pa.schema([*fields, pa.field("error", pa.string())])

    def _table(self, records: list[dict[str, Any]]) -> Any:
        data: dict[str, list[Any]] = {"path": [r["path"] for r in records]}
        for i in range(self.columns.top_k):
            data[f"label_{i + 1}"] = [r["labels"][i] if r["labels"] is not None else None for r in records]
            data[f"prob_{i + 1}"] = [r["probs"][i] if r["probs"] is not None else None for r in records]
        for key in ("uncertain", "unknown", "unknown_score"):
            if key in self.schema.names:
                data[key] = [r[key] for r in records]
        data["error"] = [r["error"] for r in records]
        return self.pa.table(data, schema=self.schema)

    def _paths_of(self, part: Path) -> list[str]:
        try:
            schema = self.pa.parquet.read_schema(part)
            if schema.names != self.schema.names:
                raise ConfigError(f"{part}: its columns ({', '.join(schema.names)}) differ from this run's; "
                                  "resume with the same --top-k and model, or choose another --out")
            return self.pa.parquet.read_table(part, columns=["path"]).column(0).to_pylist()
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise DataError(f"{part}: not a readable Parquet file ({exc}); remove it to predict its rows again") from None


class ParquetFile(ParquetShards):
    """One ``.parquet`` file: shards in ``.NAME.parts`` beside it while running, assembled at the end."""

    def __init__(self, out: Path, columns: Columns, resume: bool):
        self.target = out
        if out.exists() and not resume:
            raise _already(out)
        super().__init__(out.with_name(f".{out.name}.parts"), columns, resume)
        if out.exists():
            self.done |= set(self._paths_of(out))

    def close(self, finished: bool) -> None:
        super().close(finished)
        if finished:
            self._assemble()

    def _assemble(self) -> None:
        """The existing file's rows, then each shard's rows not already in it, into one file, atomically."""
        pq = self.pa.parquet
        sources = ([self.target] if self.target.exists() else []) + self.parts()
        temporary = self.target.with_name(f".{self.target.name}.tmp")
        seen: set[str] = set()
        with pq.ParquetWriter(temporary, self.schema) as writer:
            for source in sources:
                table = pq.read_table(source, schema=self.schema)
                paths = table.column("path").to_pylist()
                keep = [path not in seen for path in paths]
                seen.update(paths)
                writer.write_table(table.filter(self.pa.array(keep)) if not all(keep) else table)
        os.replace(temporary, self.target)
        shutil.rmtree(self.folder, ignore_errors=True)

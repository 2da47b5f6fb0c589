"""Batch inputs: prompts one per line, or a CSV file from the input folder; all checked before any GPU work.

Every problem found is reported at once, each with its row (the line of the file or text, 1-based) and column, so a
user fixes the whole file in one go. Nothing is queued while any row is bad."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

from wan_core.batch.jobs import PICTURE_FIELDS, BatchJob, JobDefaults
from wan_core.errors import InputError
from wan_core.io.files import resolve_inside
from wan_core.pipeline.validation import MAX_SEED

REQUIRED_COLUMN = "prompt"
TEXT_COLUMNS = ("negative_prompt", "style", *PICTURE_FIELDS)
# column -> (smallest, largest) value allowed: the limits of the sampler node's widgets.
INTEGER_COLUMNS = {"seed": (0, MAX_SEED), "width": (1, 4096), "height": (1, 4096), "frames": (1, 1001),
                   "steps": (1, 200)}
KNOWN_COLUMNS = (REQUIRED_COLUMN, *TEXT_COLUMNS, *INTEGER_COLUMNS)
_MAX_LISTED_PROBLEMS = 20
DEFAULTS = JobDefaults()

JobValidator = Callable[[BatchJob], None]


class _Problems:
    """Problems collected over the whole input, raised together as one InputError."""

    def __init__(self, source: str):
        self.source = source
        self.lines: list[str] = []

    def add(self, row: int, column: str | None, problem: str) -> None:
        where = f"row {row}" + (f", column '{column}'" if column else "")
        self.lines.append(f"{where}: {problem}")

    def raise_if_any(self) -> None:
        if not self.lines:
            return
        shown = self.lines[:_MAX_LISTED_PROBLEMS]
        if len(self.lines) > len(shown):
            shown.append(f"... and {len(self.lines) - len(shown)} more")
        raise InputError(
            f"{self.source} has {len(self.lines)} problem(s); nothing was queued. Fix these and queue again:\n  "
            + "\n  ".join(shown)
        )


def parse_prompt_lines(
    text: str, defaults: JobDefaults = DEFAULTS, validate_job: JobValidator | None = None
) -> list[BatchJob]:
    """One job per non-blank line of `text` (surrounding spaces removed), with the node's settings."""
    problems = _Problems("The prompt list")
    jobs: list[BatchJob] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            _add_job(jobs, problems, line_number, {REQUIRED_COLUMN: line}, defaults, validate_job)
    problems.raise_if_any()
    if not jobs:
        raise InputError("The prompt list is empty: write one prompt per line, or give a CSV file instead.")
    return jobs


def resolve_input_file(name: str | Path, input_dir: str | Path) -> Path:
    """The file `name` inside `input_dir` (relative names are taken from there), symlinks resolved.

    Anything that ends up outside the input folder (`..`, an absolute path elsewhere, a symlink pointing out) is
    refused: a workflow shared by someone else must not read arbitrary files of this machine."""
    root = Path(input_dir).resolve()
    resolved = resolve_inside(name, root, "The CSV file", "ComfyUI's input folder")
    if not resolved.is_file():
        raise InputError(f"The CSV file {str(name)!r} was not found in the input folder {root}; check the name.")
    return resolved


def read_csv_jobs(
    name: str | Path,
    input_dir: str | Path,
    defaults: JobDefaults = DEFAULTS,
    validate_job: JobValidator | None = None,
) -> list[BatchJob]:
    """The jobs of a CSV file in the input folder: a header row naming the columns (`prompt` required; any of
    negative_prompt, style, image, last_image, seed, width, height, frames, steps), then one job per non-empty row."""
    path = resolve_input_file(name, input_dir)
    problems = _Problems(f"The CSV file {path.name!r}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            jobs = _read_rows(_strict_rows(csv.reader(handle, strict=True), problems), problems, defaults,
                              validate_job)
    except UnicodeDecodeError as error:
        raise InputError(f"The CSV file {path.name!r} cannot be read ({error}); save it as UTF-8 CSV.") from error
    problems.raise_if_any()
    if not jobs:
        raise InputError(f"The CSV file {path.name!r} has a header but no prompt rows; add one row per video.")
    return jobs


def load_batch_jobs(
    prompts: str,
    csv_file: str,
    input_dir: str | Path,
    defaults: JobDefaults = DEFAULTS,
    validate_job: JobValidator | None = None,
) -> list[BatchJob]:
    """The jobs from whichever of the two inputs is filled in; both or neither is refused."""
    has_text, has_csv = bool(prompts.strip()), bool(str(csv_file).strip())
    if has_text and has_csv:
        raise InputError("Give the prompts either as text or as a CSV file, not both: clear one of the two inputs.")
    if has_csv:
        return read_csv_jobs(csv_file.strip(), input_dir, defaults, validate_job)
    if has_text:
        return parse_prompt_lines(prompts, defaults, validate_job)
    raise InputError("The batch is empty: write prompts one per line, or name a CSV file in the input folder.")


def _strict_rows(reader, problems: _Problems) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, cells) of each CSV record; a malformed record ends the file with a problem naming
    the line where that record starts (an unclosed quote would otherwise swallow every row after it)."""
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            problems.add(start, None, _csv_problem(str(error)))
            return
        yield start, cells


def _csv_problem(message: str) -> str:
    if "field larger than field limit" in message:
        return (f"a cell is longer than {csv.field_size_limit()} characters (an unclosed quote can make one); "
                "shorten it or close the quote")
    if "unexpected end of data" in message or "EOF" in message:
        return ("a quoted cell starts in this row but its closing quote is missing; close it (write \"\" for a "
                "quote inside a quoted cell)")
    return f"this row is not valid CSV ({message}); quote cells that contain commas or quotes, doubling inner quotes"


def _read_rows(
    rows: Iterator[tuple[int, list[str]]], problems: _Problems, defaults: JobDefaults,
    validate_job: JobValidator | None,
) -> list[BatchJob]:
    _, header = next(rows, (1, None))
    if header is None or not any(cell.strip() for cell in header):
        problems.add(1, None, "the header row is missing; the first row must name the columns, e.g. 'prompt,seed'")
        return []
    columns = [cell.strip().lower().replace(" ", "_").replace("-", "_") for cell in header]
    for position, column in enumerate(columns, start=1):
        if column not in KNOWN_COLUMNS:
            shown = column or f"#{position} (empty name)"
            problems.add(1, shown, f"unknown column; the columns are {', '.join(KNOWN_COLUMNS)}")
        elif columns.index(column) != position - 1:
            problems.add(1, column, "the column is named twice; keep one")
    if REQUIRED_COLUMN not in columns:
        problems.add(1, REQUIRED_COLUMN, "the header has no 'prompt' column; add it")
    if problems.lines:
        return []
    jobs: list[BatchJob] = []
    for row, cells in rows:
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(columns):
            problems.add(row, f"#{len(columns) + 1}", f"{len(cells)} cells but the header names {len(columns)} "
                         "columns; quote cells that contain commas")
            continue
        _add_job(jobs, problems, row, dict(zip(columns, cells, strict=False)), defaults, validate_job)
    return jobs


def _add_job(
    jobs: list[BatchJob],
    problems: _Problems,
    row: int,
    cells: dict[str, str],
    defaults: JobDefaults,
    validate_job: JobValidator | None,
) -> None:
    count_before = len(problems.lines)
    prompt = cells.get(REQUIRED_COLUMN, "").strip()
    if not prompt:
        problems.add(row, REQUIRED_COLUMN, "the prompt is empty; write one or delete the row")
    index = len(jobs) + 1
    values: dict[str, object] = dataclasses.asdict(defaults)
    values["seed"] = defaults.seed + index - 1
    for column in TEXT_COLUMNS:
        if cells.get(column, "").strip():
            values[column] = cells[column].strip()
    for column, limits in INTEGER_COLUMNS.items():
        text = cells.get(column, "").strip()
        if text:
            values[column] = _parse_integer(text, limits, row, column, problems)
    if len(problems.lines) == count_before and values["seed"] > MAX_SEED:  # the node's seed + the job's offset
        problems.add(row, "seed", f"the job's seed {values['seed']} (the node's seed + {index - 1}) is above "
                     f"{MAX_SEED}; lower the node's seed or give the row a seed")
    if len(problems.lines) > count_before:
        return
    job = BatchJob(index=index, prompt=prompt, **values)
    if validate_job is not None:
        try:
            validate_job(job)
        except InputError as error:
            problems.add(row, None, str(error))
            return
    jobs.append(job)


def _parse_integer(
    text: str, limits: tuple[int, int], row: int, column: str, problems: _Problems
) -> int | None:
    if len(text) > 30 or not text.lstrip("+-").isdigit():  # int() would also take '1_000', '٣' and huge numbers
        problems.add(row, column, f"{text[:40]!r} is not a whole number; write digits only or leave the cell empty")
        return None
    value = int(text)
    smallest, largest = limits
    if not smallest <= value <= largest:
        problems.add(row, column, f"{value} is out of range; it must be between {smallest} and {largest}")
        return None
    return value

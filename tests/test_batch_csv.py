import os

import pytest

from wan_core.batch import BatchJob, JobDefaults, load_batch_jobs, parse_prompt_lines, read_csv_jobs
from wan_core.errors import InputError

DEFAULTS = JobDefaults(negative_prompt="blurry", style="none", seed=100, width=832, height=480, frames=33, steps=8)


@pytest.fixture
def input_dir(tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    return folder


def write_csv(folder, text, name="batch.csv", encoding="utf-8"):
    path = folder / name
    path.write_text(text, encoding=encoding)
    return path


def test_good_csv_fills_missing_cells_from_the_node_settings(input_dir):
    write_csv(input_dir, "\ufeffPrompt, Negative Prompt,seed,width,height,frames,steps,style\n"
                         '"a fox, running in snow",,7,1280,720,81,40,Cinematic\n'
                         "\n"
                         ",,,,,,,\n"
                         "a koi pond,dark,,,,,,\n")
    jobs = read_csv_jobs("batch.csv", input_dir, DEFAULTS)
    assert jobs == [
        BatchJob(1, "a fox, running in snow", "blurry", "Cinematic", 7, 1280, 720, 81, 40),
        BatchJob(2, "a koi pond", "dark", "none", 101, 832, 480, 33, 8),
    ]


def test_prompt_column_alone_is_enough(input_dir):
    write_csv(input_dir, "prompt\nfirst\nsecond\n", name="p.csv")
    assert [(j.index, j.prompt, j.seed) for j in read_csv_jobs("p.csv", input_dir, DEFAULTS)] == [
        (1, "first", 100), (2, "second", 101)]


def test_prompt_lines_one_job_per_non_blank_line():
    jobs = parse_prompt_lines("  a cat on a roof  \n\n   \na dog in the rain\n", DEFAULTS)
    assert [(j.index, j.prompt, j.seed, j.width) for j in jobs] == [(1, "a cat on a roof", 100, 832),
                                                                    (2, "a dog in the rain", 101, 832)]


@pytest.mark.parametrize(("text", "row", "column", "problem"), [
    ("prompt,fps\na,24\n", 1, "fps", "unknown column"),
    ("text,seed\na,1\n", 1, "prompt", "no 'prompt' column"),
    ("prompt,seed,seed\na,1,2\n", 1, "seed", "named twice"),
    ("prompt,width\na,832\nb,wide\n", 3, "width", "'wide' is not a whole number"),
    ("prompt,frames\na,0\n", 2, "frames", "0 is out of range"),
    ("prompt,steps\na,2.5\n", 2, "steps", "'2.5' is not a whole number"),
    ("prompt,seed\na,-1\n", 2, "seed", "-1 is out of range"),
    ("prompt,seed\na,1\n  ,2\n", 3, "prompt", "the prompt is empty"),
    ("prompt,seed\na,1\nb,2,3\n", 3, "#3", "3 cells but the header names 2 columns"),
])
def test_each_kind_of_bad_row_is_named_by_row_and_column(input_dir, text, row, column, problem):
    write_csv(input_dir, text)
    with pytest.raises(InputError) as error:
        read_csv_jobs("batch.csv", input_dir, DEFAULTS)
    message = str(error.value)
    assert f"row {row}, column '{column}': " in message and problem in message
    assert "nothing was queued" in message


def test_all_problems_are_reported_at_once_with_file_line_numbers(input_dir):
    write_csv(input_dir, 'prompt,height\n"two\nline prompt",480\n,480\nok,tall\n')
    with pytest.raises(InputError) as error:
        read_csv_jobs("batch.csv", input_dir, DEFAULTS)
    message = str(error.value)
    assert "has 2 problem(s)" in message
    assert "row 4, column 'prompt'" in message and "row 5, column 'height': 'tall'" in message


def test_job_validator_errors_carry_the_row(input_dir):
    def validate(job):
        if job.width % 16:
            raise InputError(f"width {job.width} is not a multiple of 16")

    write_csv(input_dir, "prompt,width\na,832\nb,830\n")
    with pytest.raises(InputError, match=r"row 3: width 830 is not a multiple of 16"):
        read_csv_jobs("batch.csv", input_dir, DEFAULTS, validate_job=validate)
    with pytest.raises(InputError, match=r"row 2: width 100 is not a multiple of 16"):
        parse_prompt_lines("\nbad size\n", JobDefaults(width=100), validate_job=validate)


def test_csv_paths_outside_the_input_folder_are_refused(tmp_path, input_dir):
    outside = write_csv(tmp_path, "prompt\nsecret\n", name="outside.csv")
    (input_dir / "sub").mkdir()
    os.symlink(outside, input_dir / "link.csv")
    for name in ("../outside.csv", "sub/../../outside.csv", str(outside), "link.csv"):
        with pytest.raises(InputError, match="outside ComfyUI's input folder"):
            read_csv_jobs(name, input_dir, DEFAULTS)
    inside = write_csv(input_dir / "sub", "prompt\nfine\n", name="ok.csv")
    assert read_csv_jobs(str(inside), input_dir, DEFAULTS)[0].prompt == "fine"
    assert read_csv_jobs("sub/../sub/ok.csv", input_dir, DEFAULTS)[0].prompt == "fine"
    with pytest.raises(InputError, match="'missing.csv' was not found in the input folder"):
        read_csv_jobs("missing.csv", input_dir, DEFAULTS)


def test_unreadable_or_empty_files_are_refused(input_dir):
    write_csv(input_dir, "prompt\n", name="header_only.csv")
    with pytest.raises(InputError, match="no prompt rows"):
        read_csv_jobs("header_only.csv", input_dir, DEFAULTS)
    write_csv(input_dir, "", name="empty.csv")
    with pytest.raises(InputError, match="row 1: the header row is missing"):
        read_csv_jobs("empty.csv", input_dir, DEFAULTS)
    (input_dir / "latin1.csv").write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="save it as UTF-8 CSV"):
        read_csv_jobs("latin1.csv", input_dir, DEFAULTS)


def test_batch_takes_exactly_one_of_text_and_csv(input_dir):
    write_csv(input_dir, "prompt\nfrom csv\n")
    assert load_batch_jobs("", " batch.csv ", input_dir, DEFAULTS)[0].prompt == "from csv"
    assert load_batch_jobs("from text", "", input_dir, DEFAULTS)[0].prompt == "from text"
    with pytest.raises(InputError, match="not both"):
        load_batch_jobs("from text", "batch.csv", input_dir, DEFAULTS)
    with pytest.raises(InputError, match="The batch is empty"):
        load_batch_jobs("  \n", "", input_dir, DEFAULTS)

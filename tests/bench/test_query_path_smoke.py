"""bench/query_path.py on a tiny index: in-process and HTTP latencies, the server in its own process."""

from __future__ import annotations

import pytest

from bench import query_path

pytestmark = pytest.mark.slow  # starts `enclip serve` twice in a subprocess


def test_every_stage_of_a_query_is_timed_in_process_and_over_http(tiny_index_dir, capsys):
    assert query_path.main(["--index", str(tiny_index_dir), "--queries", "3", "--repeats", "1"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {tiny_index_dir} |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "80" and cells[2] == "3"  # items, members
    assert all(float(cell) > 0 for cell in cells[3:9])  # encode ... HTTP all: every stage took some time

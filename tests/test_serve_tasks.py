"""``adaptune serve`` refuses tasks it has no endpoint for (token classification, extractive QA, language
modelling), naming the folder and the tasks it serves, before loading any model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptune.serve.server import ServeOptions, build_server


@pytest.mark.parametrize("task", ["token-classification", "extractive-qa", "language-modeling"])
def test_unserved_tasks_are_refused_by_name(task: str, tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "task.json").write_text(json.dumps({"task": task, "model": "no-such-model", "labels": None}))
    with pytest.raises(ValueError, match=rf"adapter: task '{task}' is not served yet; .*classification, qa"):
        build_server([(None, folder)], ServeOptions())

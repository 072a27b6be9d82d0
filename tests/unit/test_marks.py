"""offload.marks: the process's timeline, and its ``timing`` event's JSON form."""

from __future__ import annotations

import json
import time

from offload import marks
from offload.ui.events import Timing, event_dict


def test_marks_keep_their_order_and_the_time_they_were_taken():
    marks.reset()
    before = time.time()
    marks.mark("imported")
    marks.mark("settings")
    after = time.time()
    taken = marks.taken()
    assert [name for name, _ in taken] == ["imported", "settings"]
    assert before <= taken[0][1] <= taken[1][1] <= after
    marks.reset()
    assert marks.taken() == ()


def test_the_timing_event_is_json_with_its_marks_as_pairs():
    line = json.dumps(event_dict(Timing((("imported", 1.5), ("closed", 2.0)), 2.5)))
    assert json.loads(line) == {
        "event": "timing",
        "marks": [["imported", 1.5], ["closed", 2.0]],
        "time": 2.5,
    }

"""The access and call log: seq numbers, rotation, reading back after a restart."""

import json

from porch.events import EventLog


def test_append_and_since(tmp_path):
    log = EventLog(tmp_path)
    for i in range(5):
        log.append("unlock", cause="api", n=i)
    got = log.since(2)
    assert [e["seq"] for e in got] == [3, 4, 5]
    assert got[0]["type"] == "unlock" and got[0]["cause"] == "api"
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [0, 1, 2, 3, 4]


def test_seq_continues_after_restart_and_rotation(tmp_path):
    log = EventLog(tmp_path, max_bytes=400, keep_files=3)
    for i in range(30):
        log.append("call", n=i)
    assert (tmp_path / "events.jsonl.1").exists()
    assert not (tmp_path / "events.jsonl.3").exists()  # bounded number of files
    reopened = EventLog(tmp_path, max_bytes=400, keep_files=3)
    assert reopened.last_seq == 30
    assert reopened.append("call")["seq"] == 31
    total = sum(p.stat().st_size for p in tmp_path.glob("events.jsonl*"))
    assert total <= 3 * 400 + 200


def test_torn_last_line_is_skipped(tmp_path):
    log = EventLog(tmp_path)
    log.append("unlock", cause="card")
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write('{"seq": 2, "type": "unl')  # power cut mid-write
    reopened = EventLog(tmp_path)
    assert reopened.last_seq == 1
    assert reopened.append("unlock")["seq"] == 2


def test_since_older_than_memory_reads_files(tmp_path):
    log = EventLog(tmp_path)
    for i in range(700):
        log.append("x", n=i)
    old = log.since(0, limit=5)
    assert [e["seq"] for e in old] == [1, 2, 3, 4, 5]


def test_listeners_see_each_event(tmp_path):
    seen = []
    log = EventLog(tmp_path)
    log.subscribe(seen.append)
    log.append("tamper", active=True)
    assert seen and seen[0]["type"] == "tamper"

"""The journal of answered requests: what a killed edge process leaves is recovered once."""

import os
import subprocess
import sys
import textwrap

from edge.journal import Journal


def event(n: int) -> dict:
    return {"v": 1, "event_id": f"e{n}", "request_id": f"r{n}", "input_tokens": n, "output_tokens": 0}


def write_and_die(directory, script: str) -> None:
    """Run journal calls in a child process that then dies without cleaning up (like SIGKILL)."""
    code = textwrap.dedent(
        f"""
        import os
        from edge.journal import Journal
        journal = Journal({str(directory)!r}, segment_bytes=200)
        def event(n):
            return {{"v": 1, "event_id": f"e{{n}}", "request_id": f"r{{n}}", "input_tokens": n, "output_tokens": 0}}
        {script}
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())


def test_a_dead_process_journal_gives_back_what_was_not_done_with_its_settlement(tmp_path):
    write_and_die(
        tmp_path,
        "journal.write(event(1), [['k'], [1]]); journal.write(event(2), None); "
        "journal.write(event(3), [['k'], [3]]); journal.done(['e1'])",
    )
    survivor = Journal(tmp_path)

    assert survivor.recover() == [event(2), {**event(3), "_settle": [["k"], [3]]}]
    # Taken once: the files are gone, a second look finds nothing.
    assert survivor.recover() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"journal-{survivor.token}.lock"]


def test_a_live_process_journal_is_left_alone(tmp_path):
    live = Journal(tmp_path)
    live.write(event(1), None)
    other = Journal(tmp_path)

    assert other.recover() == []
    assert live.pending == 1


def test_done_segments_are_removed_oldest_first_and_a_clean_close_leaves_nothing(tmp_path):
    journal = Journal(tmp_path, segment_bytes=150)
    for n in range(6):
        journal.write(event(n), None)
    segments = sorted(tmp_path.glob("journal-*.jsonl"))
    assert len(segments) > 2
    # Done out of order: the oldest segment goes only when everything in it is done.
    journal.done(["e5", "e4", "e3"])
    assert sorted(tmp_path.glob("journal-*.jsonl"))[0] == segments[0]
    journal.done(["e0", "e1", "e2"])
    assert len(list(tmp_path.glob("journal-*.jsonl"))) == 1  # the one being written
    assert journal.pending == 0
    journal.close()
    assert list(tmp_path.iterdir()) == []


def test_a_journal_spanning_segments_is_recovered_whole(tmp_path):
    write_and_die(
        tmp_path,
        "[journal.write(event(n), None) for n in range(8)]; journal.done(['e0', 'e6'])",
    )
    assert len(list(tmp_path.glob("journal-*.jsonl"))) > 2

    assert [e["event_id"] for e in Journal(tmp_path).recover()] == ["e1", "e2", "e3", "e4", "e5", "e7"]


def test_a_failing_journal_write_is_counted_and_never_breaks_the_request(tmp_path):
    from edge import metrics

    journal = Journal(tmp_path)
    journal.write(event(1), None)
    os.close(journal._fd)  # the disk goes away under the open segment
    before = metrics.JOURNAL_FAILURES._value.get()

    journal.write(event(2), None)  # no exception: publication from memory goes on

    assert metrics.JOURNAL_FAILURES._value.get() == before + 1
    assert journal.pending == 1  # only the event that reached the file waits for "done"
    journal._fd = None
    journal.write(event(3), None)  # the next write opens a new segment
    assert journal.pending == 2

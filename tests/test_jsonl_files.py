"""Locked JSON Lines files: appends from several processes while the file is moved aside to
be replayed, and the replay lock, on a real file system."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from service.jsonl_files import append_lines, lock_replay, move_aside, replaying_path

WRITERS, LINES = 4, 400


def _write(path: Path, writer: int) -> None:
    for i in range(LINES):
        append_lines(path, [{"writer": writer, "i": i, "pad": "x" * 200}])


def test_appends_while_the_file_is_moved_aside_keep_every_line_whole(tmp_path: Path) -> None:
    """Every line lands whole, once, in the moved-aside file or the new one: a writer that
    opened the file before it was moved writes into the new file, not the replayed one."""
    path = tmp_path / "spill.jsonl"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write, args=(path, w)) for w in range(WRITERS)]
    for process in writers:
        process.start()
    moves = 0
    while any(p.is_alive() for p in writers):
        moves += move_aside(path) is not None
    for process in writers:
        process.join(timeout=60)
        assert process.exitcode == 0
    lines = replaying_path(path).read_text().splitlines()
    lines += path.read_text().splitlines() if path.exists() else []
    entries = [json.loads(line) for line in lines]  # a line split or interleaved fails here
    assert sorted((e["writer"], e["i"]) for e in entries) == [
        (w, i) for w in range(WRITERS) for i in range(LINES)
    ]
    assert moves > 0


def test_one_replay_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    first = lock_replay(path)
    assert first is not None and replaying_path(path).exists()
    assert lock_replay(path) is None  # another open file description: refused
    first.close()
    second = lock_replay(path)
    assert second is not None
    second.close()


def _move(path: Path) -> None:
    move_aside(path)


def test_a_move_cut_short_by_the_process_s_death_is_finished_by_the_next(tmp_path: Path) -> None:
    """Killed while it copied a large file's lines to the replay file (`tagflow db
    replay-dead-letters` stopped by SIGTERM mid-copy of a 312 MB dead-letter file), a move
    left the renamed file where nothing read it again, and the replay file cut mid-line: the
    rest of the dead letters were lost for good. The next move finishes it: every line once,
    whole, after what a replay cut short left there."""
    path = tmp_path / "dead.jsonl"
    aside = replaying_path(path)
    aside.write_text("".join(json.dumps({"old": i}) + "\n" for i in range(10)))
    total = 300_000
    with path.open("w") as out:
        for i in range(total):
            out.write(json.dumps({"i": i, "pad": "x" * 150}) + "\n")
    before = aside.stat().st_size
    size = path.stat().st_size + before
    mover = multiprocessing.get_context("spawn").Process(target=_move, args=(path,))
    mover.start()
    while mover.is_alive() and not 0 < aside.stat().st_size - before < size // 2:
        pass  # until the copy is under way, about half done at most
    assert mover.is_alive(), "the copy finished before it could be cut short"
    mover.kill()
    mover.join(timeout=30)
    assert aside.stat().st_size < size  # cut short

    assert move_aside(path) == aside
    entries = [json.loads(line) for line in aside.read_text().splitlines()]
    assert entries[:10] == [{"old": i} for i in range(10)]
    assert [e["i"] for e in entries[10:]] == list(range(total))
    assert sorted(p.name for p in tmp_path.iterdir()) == [aside.name]

"""Status documents the reconciler writes: a worker track that went away is removed, not kept.

Statuses are merge patches: a key left out keeps its old value. After a canary
is promoted or rolled back, ``status.workers`` loses its ``canary`` track; the
patch must carry ``canary: null`` or the stale track stays forever.
"""

from __future__ import annotations

from apx.operator.reconciler import _drop_stale_tracks


def test_a_worker_track_that_went_away_is_sent_as_null_so_the_merge_patch_removes_it() -> None:
    one = {"available": 1, "desired": 1}
    previous = {"workers": {"stable": dict(one), "canary": dict(one)}}
    document = {"workers": {"stable": {"available": 1, "desired": 1}}}
    _drop_stale_tracks(document, previous)
    assert document["workers"] == {"stable": {"available": 1, "desired": 1}, "canary": None}


def test_tracks_still_present_and_documents_without_workers_are_left_alone() -> None:
    previous = {"workers": {"stable": {"available": 0, "desired": 2}}}
    document = {"workers": {"stable": {"available": 2, "desired": 2}}}
    _drop_stale_tracks(document, previous)
    assert document == {"workers": {"stable": {"available": 2, "desired": 2}}}
    sync = {"reason": "Ready"}
    _drop_stale_tracks(sync, previous)
    assert sync == {"reason": "Ready"}

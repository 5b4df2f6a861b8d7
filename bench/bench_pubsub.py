"""Pub/Sub applier benchmark: a plan's topics and subscriptions into a fresh emulator, then one Route change.

Run by `make bench` (``bench/run.py``) or `python bench/bench_pubsub.py
[--topics N] [--full/--no-full] [--max-in-flight K]`. For each size it starts
its own Pub/Sub emulator (``e2e.services``) and prints, beside a baseline
measured in the same run on the same emulator (the raw create-topic rate of
one client creating topics one after another, nobody else asking):

* the time to ensure the plan with ``PubSubApplier`` and its rate in objects/s;
* the emulator JVM's peak thread count and its idle CPU afterwards (the
  emulator keeps one thread per unordered subscription, see
  ``apx/controllers/appliers/PUBSUB.md``);
* the RPCs one Route change issues with ``verify=False`` (expected: only the
  changed Route's changed objects), and that an unchanged plan issues none;
* the RPCs and time of a verifying resync of the whole plan, object by object
  (``ensure(verify=True)``) and by listing (``resync``, from a restarted applier).

Sizes: the first routes of the 10,000-Route workload (``workload.py``
``generate_documents(10000, 1000)``) up to ``--topics`` topics (default
2,000), then the workload's full plan (36,000 topics, 36,000 subscriptions)
unless ``--no-full``. The full plan needs about 18,000 emulator threads; it is
skipped, saying why, when the machine's PID space has no room for them. When
the emulator collapses under its own subscription threads (PUBSUB.md) the
benchmark stops it, prints how far it got and exits non-zero, instead of
leaving the machine saturated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import generate_documents

from apx.controllers import names
from apx.controllers.appliers.pubsub import (
    DEFAULT_MAX_IN_FLIGHT,
    PubSubApplier,
    PubSubProblem,
    PubSubUnavailable,
)
from apx.controllers.renderers.pubsub_plan import PubSubOutput, render_pubsub
from apx.controllers.translate import translate
from e2e.services import Service, start_pubsub_emulator

PROJECT = "apx-bench"
BASELINE_TOPICS = 400
COLLAPSE_RUNNABLE = 150
COLLAPSE_SECONDS = 5
STALL_SECONDS = 60


def _threads(pid: int) -> int:
    """Threads of process ``pid``; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _system_threads() -> int:
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            total += _threads(int(entry))
    return total


class PeakThreads:
    """Samples the JVM's thread count and the load average every 0.2 s in a background thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = _threads(pid)
        self.load = 0.0  # peak 1-minute load average of the machine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, _threads(self.pid))
            with open("/proc/loadavg") as loadavg:
                self.load = max(self.load, float(loadavg.read().split()[0]))

    def __enter__(self) -> PeakThreads:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _threads(self.pid))


def _raw_create_rates(count: int, threads: int) -> tuple[float, float]:
    """Baselines: topics/s of one client creating topics one after another, then from ``threads`` threads.

    A first batch warms the JVM up (its first few hundred calls are several times slower).
    """
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()

    def create(index: int) -> None:
        publisher.create_topic(request={"name": f"projects/apx-baseline/topics/baseline-{index:05d}"})

    for index in range(count, 2 * count):
        create(index)
    started = time.perf_counter()
    for index in range(count):
        create(index)
    sequential = count / (time.perf_counter() - started)
    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        list(pool.map(create, range(2 * count, 3 * count)))
        concurrent = count / (time.perf_counter() - started)
    return sequential, concurrent


def _slice(plan: PubSubOutput, topics: int | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The plan's objects of its first Routes, up to ``topics`` topics (all when None)."""
    if topics is None:
        return list(plan.topics), list(plan.subscriptions)
    routes: list[str] = []
    count = 0
    for topic_plan in plan.plans:
        if topic_plan.route not in routes:
            if count >= topics:
                break
            routes.append(topic_plan.route)
        count += 2  # request topic and its dead-letter topic
    route_labels = {names.gcp_label_value(r) for r in routes}
    return (
        [t for t in plan.topics if t["labels"]["apx-route"] in route_labels],
        [s for s in plan.subscriptions if s["labels"]["apx-route"] in route_labels],
    )


def _one_route_changed(
    subscriptions: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], str, int]:
    """The subscriptions with one Route's ack deadline raised; (documents, route label, objects changed)."""
    route = subscriptions[0]["labels"]["apx-route"]
    changed = 0
    result = []
    for document in subscriptions:
        if document["labels"]["apx-route"] == route and document["labels"]["apx-kind"] == "worker":
            document = {**document, "ack_deadline_seconds": int(document["ack_deadline_seconds"]) + 5}
            changed += 1
        result.append(document)
    return result, route, changed


def _runnable() -> int:
    """Threads runnable on the machine right now (the load average's instantaneous input)."""
    with open("/proc/loadavg") as loadavg:
        return int(loadavg.read().split()[3].split("/")[0])


async def _guarded(
    ensure: Coroutine[Any, Any, list[PubSubProblem]], service: Service, applier: PubSubApplier
) -> list[PubSubProblem] | str:
    """Run ``ensure``; stop the emulator and say why if it collapses instead of finishing.

    Collapse: more than ``COLLAPSE_RUNNABLE`` threads runnable on the machine for
    ``COLLAPSE_SECONDS`` in a row (the emulator's once-a-second subscription threads
    falling behind and all wanting the CPU at once), or no admin call answered for
    ``STALL_SECONDS``. Left running, the emulator takes the whole machine with it.
    """
    task = asyncio.ensure_future(ensure)
    baseline = _runnable()
    crowded = 0
    last_calls, last_progress = 0, time.monotonic()
    reason = ""
    while not task.done():
        await asyncio.wait([task], timeout=1.0)
        calls = sum(applier.calls.values())
        if calls != last_calls:
            last_calls, last_progress = calls, time.monotonic()
        runnable = _runnable()
        crowded = crowded + 1 if runnable - baseline > COLLAPSE_RUNNABLE else 0
        if crowded >= COLLAPSE_SECONDS:
            reason = f"{runnable} threads runnable on the machine for {crowded} s"
        elif time.monotonic() - last_progress > STALL_SECONDS:
            reason = f"no admin call answered for {STALL_SECONDS} s"
        if reason and not task.done():
            await asyncio.to_thread(service.stop, 5.0)
            with contextlib.suppress(PubSubUnavailable):
                await task
            return reason
    return task.result()


async def _measure(
    service: Service, topics: list[dict[str, Any]], subscriptions: list[dict[str, Any]], max_in_flight: int
) -> bool:
    """Print the figures of one size; False when the emulator collapsed before the plan was in place."""
    os.environ["PUBSUB_EMULATOR_HOST"] = service.address
    jvm = service.pid
    baseline, baseline_concurrent = _raw_create_rates(BASELINE_TOPICS, max_in_flight)
    objects = len(topics) + len(subscriptions)
    unordered = sum(1 for s in subscriptions if not s.get("enable_message_ordering"))
    applier = PubSubApplier(max_in_flight=max_in_flight)
    try:
        threads_before = _threads(jvm)
        with PeakThreads(jvm) as peak:
            started = time.perf_counter()
            topics_done = started

            async def start_up() -> list[PubSubProblem]:
                # Topics, then subscriptions (the topics remembered, so not sent again):
                # the same calls as one ensure(topics, subscriptions), timed apart.
                nonlocal topics_done
                problems = await applier.ensure(topics, [])
                topics_done = time.perf_counter()
                return problems + await applier.ensure(topics, subscriptions, verify=False)

            outcome = await _guarded(start_up(), service, applier)
            elapsed = time.perf_counter() - started
        if isinstance(outcome, str):
            print(f"plan: {len(topics)} topics, {len(subscriptions)} subscriptions ({unordered} unordered)")
            print(f"baseline raw CreateTopic:  {baseline:8.0f} /s   (one client, sequential)")
            created_topics, created_subscriptions = (
                applier.calls["CreateTopic"],
                applier.calls["CreateSubscription"],
            )
            print(
                f"EMULATOR COLLAPSED after {elapsed:.0f} s: {outcome}; {created_topics} topics and "
                f"{created_subscriptions} subscriptions created, emulator threads peak {peak.peak}, "
                f"machine load average peak {peak.load:.0f}; stopped it "
                "(see apx/controllers/appliers/PUBSUB.md)"
            )
            return False
        problems = outcome
        assert not problems, problems[:3]
        created = dict(applier.calls)
        rate = objects / elapsed
        topic_rate = len(topics) / (topics_done - started)
        subscription_rate = len(subscriptions) / (elapsed - (topics_done - started))
        time.sleep(1.0)
        cpu = _cpu_seconds(jvm)
        time.sleep(5.0)
        idle_cpu = (_cpu_seconds(jvm) - cpu) / 5.0

        calls = sum(applier.calls.values())
        await applier.ensure(topics, subscriptions, verify=False)
        unchanged_rpcs = sum(applier.calls.values()) - calls

        changed_subscriptions, route, changed = _one_route_changed(subscriptions)
        before = Counter(applier.calls)
        started = time.perf_counter()
        await applier.ensure(topics, changed_subscriptions, verify=False)
        change_ms = (time.perf_counter() - started) * 1000
        change_rpcs = Counter(applier.calls)
        change_rpcs.subtract(before)

        before = Counter(applier.calls)
        started = time.perf_counter()
        await applier.ensure(topics, changed_subscriptions, verify=True)
        resync_s = time.perf_counter() - started
        resync_rpcs = Counter(applier.calls)
        resync_rpcs.subtract(before)

        restarted = PubSubApplier(max_in_flight=max_in_flight)  # nothing remembered
        try:
            started = time.perf_counter()
            listed_problems = await restarted.resync(topics, changed_subscriptions)
            listing_s = time.perf_counter() - started
            assert not listed_problems, listed_problems[:3]
            listing_rpcs = dict(restarted.calls)
        finally:
            restarted.close()
    finally:
        applier.close()

    print(f"plan: {len(topics)} topics, {len(subscriptions)} subscriptions ({unordered} unordered)")
    print(
        f"baseline raw CreateTopic:  {baseline:8.0f} /s   (one client, sequential, {BASELINE_TOPICS} topics)"
    )
    print(f"  from {max_in_flight} threads:        {baseline_concurrent:8.0f} /s   (one client, shared)")
    print(
        f"applier ensure at start:  {rate:8.0f} objects/s   {elapsed:7.1f} s   "
        f"({rate / baseline:.2f}x the sequential baseline, "
        f"{rate / baseline_concurrent:.2f}x the threaded one; max {max_in_flight} in flight, "
        f"peak {applier.peak_in_flight}; RPCs {sum(created.values())}, back-offs {applier.backoffs})"
    )
    print(
        f"  topics:                 {topic_rate:8.0f} /s   "
        f"({topic_rate / baseline_concurrent:.2f}x the threaded baseline)"
    )
    print(f"  subscriptions:          {subscription_rate:8.0f} /s")
    print(
        f"emulator threads:         {threads_before} before, peak {peak.peak} "
        f"(+{peak.peak - threads_before} for {unordered} unordered subscriptions); "
        f"idle CPU afterwards {idle_cpu:.2f} cores; machine load average peak {peak.load:.1f}"
    )
    print(f"unchanged plan again:     {unchanged_rpcs} RPCs (verify=False)")
    print(
        f"one Route changed:        {sum(v for v in change_rpcs.values() if v)} RPCs "
        f"{dict((k, v) for k, v in change_rpcs.items() if v)} in {change_ms:.0f} ms "
        f"for {changed} changed subscriptions of {route}"
    )
    print(
        f"verifying resync:         {sum(v for v in resync_rpcs.values() if v)} RPCs in {resync_s:.1f} s "
        f"({objects / resync_s:.0f} objects/s)"
    )
    print(
        f"listing resync:           {sum(listing_rpcs.values())} RPCs {listing_rpcs} in {listing_s:.1f} s "
        f"(a restarted applier; {objects / listing_s:.0f} objects/s)"
    )
    return True


def _run_size(label: str, topics: list[dict[str, Any]], subscriptions: list[dict[str, Any]], k: int) -> bool:
    print(f"-- {label}", flush=True)
    with tempfile.TemporaryDirectory(prefix="apx-bench-pubsub-") as workdir:
        service = start_pubsub_emulator(Path(workdir) / "pubsub")
        try:
            return asyncio.run(_measure(service, topics, subscriptions, k))
        finally:
            service.stop()
            sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--topics", type=int, default=2000, help="topics of the small size (default 2,000; 0: skip it)"
    )
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT)
    args = parser.parse_args()

    plan = render_pubsub(translate(generate_documents(10_000, 1_000)).ir, project=PROJECT)
    topics, subscriptions = _slice(plan, args.topics)
    label = f"first Routes of the 10,000-Route workload, {len(topics)} topics"
    if args.topics > 0 and not _run_size(label, topics, subscriptions, args.max_in_flight):
        return 1
    if not args.full:
        return 0
    topics, subscriptions = _slice(plan, None)
    needed = sum(1 for s in subscriptions if not s.get("enable_message_ordering"))
    with open("/proc/sys/kernel/pid_max") as pid_max_file:
        pid_max = int(pid_max_file.read())
    room = pid_max - _system_threads()
    if room < needed + 4000:
        print(
            f"-- full plan skipped: the emulator would need about {needed} threads and this machine has "
            f"room for {room} more (kernel.pid_max {pid_max}); see apx/controllers/appliers/PUBSUB.md"
        )
        return 0
    # A collapse is the emulator's limit, not the applier's, but the figure was not measured: non-zero.
    return (
        0
        if _run_size("the 10,000-Route workload's full plan", topics, subscriptions, args.max_in_flight)
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())

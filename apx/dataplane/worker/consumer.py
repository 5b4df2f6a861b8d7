"""Pub/Sub side of the worker: synchronous pull with flow control, batched acks, nacks and lease extensions.

Used by ``apx.dataplane.worker.processor`` (and by the benchmark for its raw
baseline). Why synchronous ``pull`` and not the client's streaming
``subscribe``: on the emulator streaming pull delivers about 2,000 messages/s
while ``pull`` + ``acknowledge`` in batches does about 15,000, and the
streaming client's per-message callback thread pool adds its own overhead.
What streaming pull would have given for free is done here instead:

* **Flow control**: at most ``max_outstanding`` messages are held (pulled and
  neither acked nor nacked). Each pull asks for no more than the free slots;
  slots come back when a message is acked or nacked.
* **Ordering**: with ordering keys the emulator (and Pub/Sub) hands a
  synchronous puller a key's messages in order but possibly several at once,
  so the processor serialises each key itself (see ``processor``).
* **Leases**: messages held longer than half their subscription's ack deadline
  get their deadline extended (``modify_ack_deadline``) by the processor's
  lease loop through ``extend``.
* **Batching**: acks, nacks (``modify_ack_deadline`` 0 — Pub/Sub's retry
  policy on the subscription provides the exponential backoff) and extensions
  go to one sender thread that sends whatever accumulated as one RPC per
  (subscription, kind), up to 1,000 ids each. When fewer than that are
  waiting it lingers ``ACK_LINGER_SECONDS`` (10 ms) for more: messages of one
  pull finish a fraction of a millisecond apart, and without the pause each
  RPC carried a few dozen ids, which cost the server (the emulator shares the
  benchmark machine) more than the messages themselves. Flow-control slots
  come back when the sender takes the ids, not when the RPC returns.

One puller thread per subscription; gRPC releases the GIL while it waits, so
pulls, acks and the event loop overlap. Pulled batches are handed to the
caller's ``on_batch`` from the puller thread (the processor hops onto its
event loop). After ``stop_pulling`` no new pull starts; a pull already waiting
returns within the server's wait (about 2 s on the emulator) and whatever it
brings back is nacked at once, so it is redelivered to another worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

log = logging.getLogger(__name__)

ACK_BATCH = 1000
ACK_LINGER_SECONDS = 0.01
# Short, so a stopping worker is never stuck behind a pull the server holds open.
PULL_TIMEOUT_SECONDS = 2.5
_RETRYABLE = (
    gexc.DeadlineExceeded,
    gexc.ServiceUnavailable,
    gexc.InternalServerError,
    gexc.Aborted,
    gexc.RetryError,
)


@dataclass(eq=False, slots=True)
class Delivery:
    """One received message, as long as the worker holds it."""

    subscription: str  # full path
    ack_id: str
    message_id: str
    data: bytes
    attributes: dict[str, str]
    ordering_key: str
    delivery_attempt: int  # 1 on first delivery; 0 when the subscription has no dead-letter policy
    publish_time: float  # seconds since the epoch, set by Pub/Sub
    received: float = field(default_factory=time.monotonic)
    extended: float = field(default_factory=time.monotonic)
    settled: bool = False  # acked or nacked


@dataclass(frozen=True, slots=True)
class SubscriptionSettings:
    path: str
    ack_deadline_seconds: int
    max_delivery_attempts: int  # 0: no dead-letter policy
    ordering: bool


class PullConsumer:
    """Pulls the given subscriptions in threads and settles messages in batches."""

    def __init__(
        self,
        subscriptions: Iterable[str],
        on_batch: Callable[[list[Delivery]], None],
        *,
        max_outstanding: int,
        max_batch: int = 1000,
        client: pubsub_v1.SubscriberClient | None = None,
    ) -> None:
        self.subscriptions = tuple(subscriptions)
        self._on_batch = on_batch
        self.max_outstanding = max_outstanding
        self.max_batch = max_batch
        self.client = client or pubsub_v1.SubscriberClient()
        self._outstanding = 0
        self._capacity = threading.Condition()
        self._stopping = threading.Event()
        self._ops: queue.SimpleQueue[tuple[str, str, str, int] | None] = queue.SimpleQueue()
        self._pullers: list[threading.Thread] = []
        self._sender: threading.Thread | None = None
        self.pull_errors = 0

    # --- setup --------------------------------------------------------------------------

    def settings(self, path: str) -> SubscriptionSettings:
        """The subscription's ack deadline, dead-letter attempts and ordering, as configured in Pub/Sub."""
        live = self.client.get_subscription(request={"subscription": path}, timeout=10)
        policy = live.dead_letter_policy
        attempts = int(policy.max_delivery_attempts) if policy and policy.dead_letter_topic else 0
        return SubscriptionSettings(
            path=path,
            ack_deadline_seconds=int(live.ack_deadline_seconds) or 10,
            max_delivery_attempts=attempts,
            ordering=bool(live.enable_message_ordering),
        )

    def start(self) -> None:
        self._sender = threading.Thread(target=self._send_loop, name="apx-acks", daemon=True)
        self._sender.start()
        for path in self.subscriptions:
            thread = threading.Thread(
                target=self._pull_loop, args=(path,), name=f"apx-pull-{path}", daemon=True
            )
            thread.start()
            self._pullers.append(thread)

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._pullers) and (self._sender is None or self._sender.is_alive())

    @property
    def outstanding(self) -> int:
        return self._outstanding

    # --- pulling --------------------------------------------------------------------------

    def _reserve(self) -> int:
        with self._capacity:
            while self._outstanding >= self.max_outstanding and not self._stopping.is_set():
                self._capacity.wait(0.5)
            if self._stopping.is_set():
                return 0
            wanted = min(self.max_batch, self.max_outstanding - self._outstanding)
            self._outstanding += wanted
            return wanted

    def _give_back(self, count: int) -> None:
        if count <= 0:
            return
        with self._capacity:
            self._outstanding -= count
            self._capacity.notify_all()

    def _pull_loop(self, path: str) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            wanted = self._reserve()
            if wanted == 0:
                break
            try:
                response = self.client.pull(
                    request={"subscription": path, "max_messages": wanted}, timeout=PULL_TIMEOUT_SECONDS
                )
            except gexc.DeadlineExceeded:
                self._give_back(wanted)
                continue
            except Exception as exc:  # keep pulling: Pub/Sub outages are transient
                self._give_back(wanted)
                if self._stopping.is_set():
                    break  # the channel was closed under a waiting pull
                self.pull_errors += 1
                level = logging.WARNING if isinstance(exc, _RETRYABLE) else logging.ERROR
                log.log(level, "pull failed: %s", exc, extra={"subscription": path, "error": str(exc)})
                self._stopping.wait(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            backoff = 0.1
            # The raw protobuf, not the proto-plus wrapper: field access on the
            # wrapper costs microseconds per field, which shows at 10k messages/s.
            received = pubsub_v1.types.PullResponse.pb(response).received_messages
            self._give_back(wanted - len(received))
            if not received:
                continue
            now = time.monotonic()
            batch = [
                Delivery(
                    subscription=path,
                    ack_id=item.ack_id,
                    message_id=item.message.message_id,
                    data=item.message.data,
                    attributes=dict(item.message.attributes),
                    ordering_key=item.message.ordering_key,
                    delivery_attempt=int(item.delivery_attempt),
                    publish_time=item.message.publish_time.seconds + item.message.publish_time.nanos / 1e9,
                    received=now,
                    extended=now,
                )
                for item in received
            ]
            if self._stopping.is_set():
                for delivery in batch:
                    self.nack(delivery)
                break
            self._on_batch(batch)

    def stop_pulling(self) -> None:
        """Start no new pull; waiting pulls finish on their own and their messages are nacked."""
        self._stopping.set()
        with self._capacity:
            self._capacity.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # --- settling -------------------------------------------------------------------------

    def ack(self, delivery: Delivery) -> None:
        self._settle(delivery, "ack")

    def nack(self, delivery: Delivery) -> None:
        self._settle(delivery, "nack")

    def _settle(self, delivery: Delivery, kind: str) -> None:
        if delivery.settled:
            return
        delivery.settled = True
        # The sender thread returns the flow-control slot, so the event loop never takes the lock.
        self._ops.put((kind, delivery.subscription, delivery.ack_id, 0))

    def extend(self, deliveries: Iterable[Delivery], seconds: int) -> None:
        now = time.monotonic()
        for delivery in deliveries:
            if not delivery.settled:
                delivery.extended = now
                self._ops.put(("extend", delivery.subscription, delivery.ack_id, seconds))

    def _send_loop(self) -> None:
        finished = False
        while not finished:
            try:
                first = self._ops.get(timeout=0.5)
            except queue.Empty:
                continue
            ops = [first]
            self._drain_ops(ops)
            if len(ops) < ACK_BATCH and None not in ops:
                # Let a few more settle: an RPC of hundreds costs the server little more than one of ten.
                time.sleep(ACK_LINGER_SECONDS)
                self._drain_ops(ops)
            if None in ops:
                finished = True
                ops = [op for op in ops if op is not None]
            groups: dict[tuple[str, str, int], list[str]] = {}
            for kind, path, ack_id, seconds in ops:  # type: ignore[misc]
                groups.setdefault((kind, path, seconds), []).append(ack_id)
            self._give_back(sum(len(ids) for (kind, _, _), ids in groups.items() if kind != "extend"))
            for (kind, path, seconds), ack_ids in groups.items():
                for start in range(0, len(ack_ids), ACK_BATCH):
                    self._send(kind, path, seconds, ack_ids[start : start + ACK_BATCH])

    def _drain_ops(self, ops: list[tuple[str, str, str, int] | None]) -> None:
        while len(ops) < 4 * ACK_BATCH:
            try:
                ops.append(self._ops.get_nowait())
            except queue.Empty:
                return

    def _send(self, kind: str, path: str, seconds: int, ack_ids: list[str]) -> None:
        try:
            if kind == "ack":
                self.client.acknowledge(request={"subscription": path, "ack_ids": ack_ids}, timeout=30)
            else:
                deadline = 0 if kind == "nack" else seconds
                self.client.modify_ack_deadline(
                    request={"subscription": path, "ack_ids": ack_ids, "ack_deadline_seconds": deadline},
                    timeout=30,
                )
        except Exception as exc:
            # Not fatal: an unacked message is redelivered and the processor's
            # idempotency check acks it without running it again.
            log.warning(
                "%s of %d messages failed",
                kind,
                len(ack_ids),
                extra={"subscription": path, "error": str(exc)},
            )

    def close(self, timeout: float = PULL_TIMEOUT_SECONDS + 1) -> None:
        """Stop pulling, send every queued ack/nack, and stop the threads."""
        self.stop_pulling()
        deadline = time.monotonic() + timeout
        for thread in self._pullers:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._ops.put(None)
        if self._sender is not None:
            self._sender.join(timeout)
        self.client.close()

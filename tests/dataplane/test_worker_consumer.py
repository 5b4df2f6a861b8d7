"""The worker's Pub/Sub consumer with a recording client: settled messages go out in few RPCs."""

from __future__ import annotations

import threading
import time
from typing import Any

from google.cloud import pubsub_v1

from apx.dataplane.worker.consumer import PullConsumer

SUBSCRIPTION = "projects/apx-test/subscriptions/orders"


class RecordingClient:
    """Hands out one pull of ``count`` messages, then empty pulls; records acks and deadline changes."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.rpcs: list[tuple[str, list[str], int]] = []
        self.asked: list[int] = []
        self.lock = threading.Lock()

    def pull(self, request: dict[str, Any], timeout: float) -> Any:
        response = pubsub_v1.types.PullResponse()
        with self.lock:
            self.asked.append(int(request["max_messages"]))
            count, self.count = min(self.count, int(request["max_messages"])), 0
        if not count:
            time.sleep(0.02)
        for i in range(count):
            response.received_messages.append(
                pubsub_v1.types.ReceivedMessage(
                    ack_id=f"ack-{i}",
                    message=pubsub_v1.types.PubsubMessage(data=b"{}", message_id=str(i)),
                )
            )
        return response

    def acknowledge(self, request: dict[str, Any], timeout: float) -> None:
        with self.lock:
            self.rpcs.append(("ack", list(request["ack_ids"]), -1))

    def modify_ack_deadline(self, request: dict[str, Any], timeout: float) -> None:
        with self.lock:
            self.rpcs.append(("deadline", list(request["ack_ids"]), int(request["ack_deadline_seconds"])))

    def close(self) -> None:
        pass


def test_a_burst_of_settled_messages_goes_out_in_one_rpc_per_kind_and_frees_the_slots() -> None:
    client = RecordingClient(40)
    batches: list[Any] = []
    consumer = PullConsumer([SUBSCRIPTION], batches.extend, max_outstanding=40, client=client)  # type: ignore[arg-type]
    consumer.start()
    try:
        deadline = time.monotonic() + 5
        while len(batches) < 40 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(batches) == 40 and consumer.outstanding == 40
        # A worker settles a pull's messages one by one as their calls end, a fraction of a millisecond apart.
        for delivery in batches[:30]:
            consumer.ack(delivery)
            time.sleep(0.0002)
        for delivery in batches[30:]:
            consumer.nack(delivery)
        pulls_before = len(client.asked)
        while 40 not in client.asked[pulls_before:] and time.monotonic() < deadline:
            time.sleep(0.005)
        # Every slot came back: a pull asked for all 40 again.
        assert 40 in client.asked[pulls_before:]
    finally:
        consumer.close(timeout=2)
    acks = [ids for kind, ids, _ in client.rpcs if kind == "ack"]
    nacks = [(ids, seconds) for kind, ids, seconds in client.rpcs if kind == "deadline"]
    assert sorted(i for ids in acks for i in ids) == sorted(f"ack-{i}" for i in range(30))
    assert len(acks) <= 2, f"30 acks took {len(acks)} RPCs"
    assert sorted(i for ids, _ in nacks for i in ids) == sorted(f"ack-{i}" for i in range(30, 40))
    assert all(
        seconds == 0 for _, seconds in nacks
    )  # a nack is a zero deadline: redelivery by the retry policy

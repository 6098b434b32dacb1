"""One batch, one runner: a lease under the storage root, taken before anything is sent.

Two runners of one batch (two CLI runs, a CLI run beside a sensor's run, two Dagster runs
of a partition on different machines) would each send every row still to do and pay for
it twice. The only thing every runner shares is the storage root, so the lease lives there
and is won with the stores' create-only write (``os.link`` locally, ``If-None-Match: *``
on S3), which exactly one writer wins::

    leases/<batch>/<generation>.json        who holds it: run id, host, pid, since (create-only)
    leases/<batch>/<generation>.heartbeat   the holder's last sign of life (rewritten)
    leases/<batch>/<generation>.released    the holder finished (written once)

The current lease is the highest generation. A runner takes generation ``n + 1`` when
``n`` is released, or when ``n``'s holder has given no sign of life for the lease's
time to live (it died: SIGKILL, a lost machine), or at once when the holder ran on this
machine and its process no longer exists; the taker then resumes from the batch's ledger
like any re-run. While ``n`` is alive a second runner **refuses at once** (it does
not wait): one message names the holder, and nothing is paid. Refusing keeps a forgotten
terminal from starting a batch hours later; Dagster runs of one partition wait in the run
queue instead (``dagster.yaml``: a tag concurrency limit on ``dagster/partition``).

Times are the writers' wall clocks (UTC seconds): machines sharing a root are assumed to
agree within a few seconds, far less than :data:`DEFAULT_TTL_S`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from ideogram_pipeline.storage import NoSpaceLeft, ObjectExists, ObjectStore, StorageError

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_TTL_S",
    "LEASE_PREFIX",
    "BatchLease",
    "BatchLeased",
    "LeaseHolder",
    "acquire_lease",
]

LEASE_PREFIX = "leases"
#: A lease with no heartbeat for this long is taken over: its holder is presumed dead.
DEFAULT_TTL_S = 60.0
#: How often a holder proves it is alive (several beats fit in one time to live).
DEFAULT_HEARTBEAT_S = 10.0


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a batch: enough for a person to find the run and the process."""

    run_id: str
    host: str
    pid: int
    since: float  # UTC seconds
    ttl_s: float
    token: str  # unique per acquisition, so two holders' bodies never compare equal

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.since, tz=UTC).isoformat(timespec="seconds")
        return f"run {self.run_id} on host {self.host} (pid {self.pid}) since {since}"


class BatchLeased(Exception):
    """Another runner holds the batch; nothing was sent."""

    def __init__(self, batch: str, holder: LeaseHolder, last_beat_s_ago: float) -> None:
        expires = max(holder.ttl_s - last_beat_s_ago, 0.0)
        super().__init__(
            f"batch {batch} is already being run by {holder.describe()} (last sign of life "
            f"{last_beat_s_ago:.0f} s ago); nothing was sent. Wait for it to finish, or, if "
            f"that runner is dead, run again in {expires:.0f} s when its lease expires"
        )
        self.batch = batch
        self.holder = holder


def _folder(batch: str) -> str:
    return f"{LEASE_PREFIX}/{batch}"


class BatchLease:
    """A held lease: beats in a background thread until :meth:`release`.

    ``on_lost`` is called (from the heartbeat thread) if another runner took the batch over,
    which happens only when this holder failed to beat for a whole time to live.
    """

    def __init__(
        self,
        store: ObjectStore,
        batch: str,
        generation: int,
        holder: LeaseHolder,
        *,
        heartbeat_s: float,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.batch = batch
        self.generation = generation
        self.holder = holder
        self.heartbeat_s = heartbeat_s
        self.on_lost = on_lost
        self.lost = False
        #: The holder this lease was taken over from (it died without releasing), if any.
        self.taken_over_from: LeaseHolder | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat_forever, name=f"lease-{batch}", daemon=True
        )

    def _key(self, suffix: str, generation: int | None = None) -> str:
        return f"{_folder(self.batch)}/{generation or self.generation:08d}.{suffix}"

    def beat(self) -> None:
        body = json.dumps({"at": time.time(), "token": self.holder.token}).encode()
        self.store.put_bytes(self._key("heartbeat"), body, content_type="application/json")

    def _taken_over(self) -> bool:
        return self.store.head(self._key("json", self.generation + 1)) is not None

    def _beat_forever(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if self._taken_over():
                    self.lost = True
                    if self.on_lost is not None:
                        self.on_lost()
                    return
                self.beat()
            except StorageError:
                continue  # a storage hiccup: the next beat tries again, well within the TTL

    def start(self) -> BatchLease:
        self._thread.start()
        return self

    def release(self) -> None:
        """Mark the lease released (the next runner takes it at once) and tidy older ones."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.lost:
            return
        try:
            self.store.put_bytes(
                self._key("released"), b'{"released": true}', content_type="application/json"
            )
        except NoSpaceLeft:
            # A full disk takes no marker, but deleting needs no space: the lease is
            # withdrawn instead, so the next runner takes this generation at once (and the
            # run's own error, not this one, is what the person sees).
            self.store.delete([self._key("heartbeat"), self._key("json")])
            return
        older = [
            info.key
            for info in self.store.list(f"{_folder(self.batch)}/")
            if _generation_of(info.key) < self.generation
        ]
        if older:
            self.store.delete(older)

    def __enter__(self) -> BatchLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _generation_of(key: str) -> int:
    name = key.rsplit("/", 1)[-1].split(".", 1)[0]
    return int(name) if name.isdigit() else -1


def _read_holder(store: ObjectStore, key: str) -> LeaseHolder:
    return LeaseHolder(**json.loads(store.get_bytes(key)))


def _died_here(holder: LeaseHolder) -> bool:
    """Whether the holder ran on this machine and its process is gone: then it is dead for
    sure, and a re-run right after a kill need not wait for the lease to expire. (A pid
    reused by another process only makes us wait for the expiry.)"""
    if holder.host != socket.gethostname() or holder.pid == os.getpid():
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _last_beat(store: ObjectStore, folder: str, generation: int, holder: LeaseHolder) -> float:
    try:
        beat = json.loads(store.get_bytes(f"{folder}/{generation:08d}.heartbeat"))
    except StorageError:
        return holder.since
    return max(float(beat.get("at", 0.0)), holder.since)


def acquire_lease(
    store: ObjectStore,
    batch: str,
    run_id: str,
    *,
    ttl_s: float = DEFAULT_TTL_S,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    on_lost: Callable[[], None] | None = None,
) -> BatchLease:
    """Take the batch's lease or raise :class:`BatchLeased` naming the live holder.

    Returns a started :class:`BatchLease`; use it as a context manager so it is released.
    """
    folder = _folder(batch)
    names = {info.key.rsplit("/", 1)[-1] for info in store.list(f"{folder}/")}
    generations = sorted({_generation_of(name) for name in names if name.endswith(".json")})
    current = generations[-1] if generations else 0
    dead: LeaseHolder | None = None
    if current:
        holder = _read_holder(store, f"{folder}/{current:08d}.json")
        if f"{current:08d}.released" not in names:
            silent_for = time.time() - _last_beat(store, folder, current, holder)
            if silent_for < holder.ttl_s and not _died_here(holder):
                raise BatchLeased(batch, holder, silent_for)
            dead = holder
    mine = LeaseHolder(
        run_id=run_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        since=time.time(),
        ttl_s=ttl_s,
        token=uuid.uuid4().hex,
    )
    key = f"{folder}/{current + 1:08d}.json"
    try:
        store.put_bytes(
            key,
            json.dumps(asdict(mine), sort_keys=True).encode(),
            content_type="application/json",
            create_only=True,
        )
    except ObjectExists:
        # Another runner won this generation a moment ago: it is alive by definition.
        raise BatchLeased(batch, _read_holder(store, key), 0.0) from None
    lease = BatchLease(store, batch, current + 1, mine, heartbeat_s=heartbeat_s, on_lost=on_lost)
    lease.taken_over_from = dead
    lease.beat()
    return lease.start()

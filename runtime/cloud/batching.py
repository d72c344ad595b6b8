"""Dynamic batching on the cloud: requests for the same tail, from every connected edge, run as one batch.

As Triton's dynamic batcher: a request waits at most ``max_delay_ms`` for others to
join it; a batch closes when it holds ``max_batch`` samples or the oldest request
has waited that long, or every connection bound to this tail already has a request
in the queue (no one else can join, so waiting longer would only add latency),
whichever comes first.  The batch is concatenated along the
batch axis, run once, and its output split back, each request's rows to its own
connection.  One worker thread per tail, so a tail never runs two batches at once
(on a GPU that is what batching is for; on a CPU the backend's own threads share
the cores).  Figures per request: ``queue_ms`` (from arrival to the start of its
batch's run) and ``compute_ms`` (the batch's run), and the batch's size.  A request of several tensors (a cut where
several cross, ``runtime.values``) is joined and split tensor by tensor.
"""
import collections
import logging
import threading
import time

from runtime import values

log = logging.getLogger("edgesplit.server")


class _Request(object):
    __slots__ = ("array", "done", "arrived", "source")

    def __init__(self, array, done, source):
        self.array = array
        self.done = done
        self.source = source
        self.arrived = time.perf_counter()


class DynamicBatcher(object):
    """Batches the requests of one tail (``runner.run``) across connections."""

    def __init__(self, runner, max_batch, max_delay_ms, name="tail", sources=None):
        if max_batch < 1 or max_delay_ms < 0:
            raise ValueError("max_batch >= 1 and max_delay_ms >= 0")
        self.runner = runner
        self.name = name
        self.sources = sources  # callable: how many connections may send to this tail (None: unknown)
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self._queue = collections.deque()
        self._queued_samples = 0
        self._queued_by = collections.Counter()  # source -> requests queued
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._loop, name="batcher-" + name, daemon=True)
        self._thread.start()

    def submit(self, array, done, source=None):
        """Queue one request from ``source`` (its connection); ``done(output, queue_ms, compute_ms, batch_size,
        error)`` is called from the worker."""
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher closed")
            self._queue.append(_Request(array, done, source))
            self._queued_samples += values.batch_size(array)
            self._queued_by[source] += 1
            # wake the worker only when this request can start or close a batch: each wake-up
            # costs the connection threads a switch of the GIL
            if len(self._queue) == 1 or self._queued_samples >= self.max_batch or self._everyone_in():
                self._cond.notify()

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(30)

    def _take(self):
        """Wait for a batch to close; return its requests (None once closed and empty)."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].arrived + self.max_delay_s
            while self._queued_samples < self.max_batch and not self._closed and not self._everyone_in():
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken, samples = [], 0
            while self._queue and (not taken or samples + values.batch_size(self._queue[0].array) <= self.max_batch):
                request = self._queue.popleft()
                taken.append(request)
                samples += values.batch_size(request.array)
                self._queued_by[request.source] -= 1
                if not self._queued_by[request.source]:
                    del self._queued_by[request.source]
            self._queued_samples -= samples
            return taken

    def _everyone_in(self):
        if self.sources is None:
            return False
        return len(self._queued_by) >= self.sources()

    def _loop(self):
        while True:
            taken = self._take()
            if taken is None:
                return
            start = time.perf_counter()
            n_samples = sum(values.batch_size(r.array) for r in taken)
            try:
                if len(taken) == 1:
                    y = self.runner.run(taken[0].array)
                elif hasattr(self.runner, "run_many") and not isinstance(taken[0].array, tuple):
                    y = self.runner.run_many([r.array for r in taken])  # copies them straight into its input
                else:
                    y = self.runner.run(values.concat([r.array for r in taken]))
                error = None
            except Exception as exc:  # answered to every request of the batch; the server goes on
                log.exception("batched tail run failed")
                y, error = None, exc
            compute_ms = (time.perf_counter() - start) * 1000.0
            self.batches += 1
            self.samples += n_samples if error is None else 0
            row = 0
            for r in taken:
                n = values.batch_size(r.array)
                out = values.rows(y, row, row + n) if error is None else None
                row += n
                try:
                    r.done(out, (start - r.arrived) * 1000.0, compute_ms, n_samples, error)
                except Exception:  # one connection's failure to send must not stop the others
                    log.exception("delivering a batched result failed")

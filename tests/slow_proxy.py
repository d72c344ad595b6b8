"""A user-space TCP proxy on loopback that throttles both directions; the rate may change while it runs."""
import socket
import threading
import time


class LoopbackProxy(object):
    """A listener on loopback that connects each client to ``target`` and hands both sockets to
    ``_connect(client, upstream)``, which by default starts a thread a direction running ``_pipe``."""

    def __init__(self, target_host, target_port, backlog=8):
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(backlog)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.address = "127.0.0.1:{}".format(self.port)
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:  # closed
                break
            self._connect(client, socket.create_connection(self.target))

    def _connect(self, client, upstream):
        """One thread a direction, each running ``_pipe(src, dst, downstream)``."""
        threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src, dst, downstream):
        """Move bytes from ``src`` to ``dst`` (``downstream``: cloud to edge), a chunk at a time through
        ``_forward``, until either side closes."""
        try:
            while not self._stop.is_set():
                data = src.recv(16384)
                if not data:
                    break
                self._forward(data, dst, downstream)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    def _forward(self, data, dst, downstream):
        raise NotImplementedError

    @staticmethod
    def _close(*socks):
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self._stop.set()
        self.listener.close()


class SlowProxy(LoopbackProxy):
    def __init__(self, target_host, target_port, bytes_per_s=None):
        self.rate = bytes_per_s  # None: no limit
        self.forwarded = 0  # cloud -> edge bytes so far
        LoopbackProxy.__init__(self, target_host, target_port)

    def _forward(self, data, dst, downstream):
        dst.sendall(data)
        if downstream:
            self.forwarded += len(data)
        rate = self.rate
        if rate:
            time.sleep(len(data) / float(rate))


class GateProxy(LoopbackProxy):
    """Forwards both directions as they come, but holds the cloud's replies while the gate is shut (``shut()``,
    ``open()``): a link that stalls and recovers, with nothing lost.  ``replies_held`` counts the chunks that
    waited at the gate.  ``shut(upstream=True)`` holds the edge's bytes instead (the proxy stops reading them, so
    the edge's sends fill the socket buffers and then block)."""

    def __init__(self, target_host, target_port):
        self.gates = {True: threading.Event(), False: threading.Event()}  # downstream? -> open
        for gate in self.gates.values():
            gate.set()
        self.replies_held = 0
        LoopbackProxy.__init__(self, target_host, target_port)

    def shut(self, upstream=False):
        self.gates[not upstream].clear()

    def open(self):
        for gate in self.gates.values():
            gate.set()

    def _forward(self, data, dst, downstream):
        gate = self.gates[downstream]
        if not gate.is_set():
            self.replies_held += downstream
            gate.wait()
        dst.sendall(data)


def answer_through_a_stall(edge, proxy, shut_after, open_after):
    """Read a ``run-edge --verbose`` process's stdout, shutting ``proxy``'s gate once it has printed
    ``shut_after`` predictions and opening it after ``open_after``: the edge must answer the frames between
    on its own, since no reply can reach it meanwhile.  Returns (stdout lines, stderr lines, replies held at
    the gate when it opened); the process has ended."""
    printed, stderr, held = [], [], []
    reader = threading.Thread(target=lambda: stderr.extend(edge.stderr), daemon=True)
    reader.start()
    for line in edge.stdout:
        printed.append(line)
        answered = sum(1 for p in printed if p.startswith("Prediction"))
        if answered == shut_after:
            proxy.shut()
        elif answered == open_after and not held:
            held.append(proxy.replies_held)
            proxy.open()
    edge.wait(timeout=300)
    reader.join(10)
    return printed, stderr, held[0] if held else 0

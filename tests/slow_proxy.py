"""A user-space TCP proxy on loopback that throttles both directions; the rate may change while it runs."""
import socket
import threading
import time


class SlowProxy(object):
    def __init__(self, target_host, target_port, bytes_per_s=None):
        self.target = (target_host, target_port)
        self.rate = bytes_per_s  # None: no limit
        self.forwarded = 0  # cloud -> edge bytes so far
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
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
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src, dst, downstream):
        try:
            while not self._stop.is_set():
                data = src.recv(16384)
                if not data:
                    break
                dst.sendall(data)
                if downstream:
                    self.forwarded += len(data)
                rate = self.rate
                if rate:
                    time.sleep(len(data) / float(rate))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._stop.set()
        self.listener.close()

"""Keep-alive figures for scripts/bench-proxy: `serve CERT PORT` runs an HTTP/1.1 keep-alive TLS
origin (a 100-byte body; 2 MiB for /big); `measure CAFILE PORT N` sends N sequential requests
over one connection and prints requests/s, p50 and p99 round trip in microseconds; `hold CAFILE
PORT N SECONDS` opens N connections, downloads /big on each, prints "ready" and keeps them
open (idle) for SECONDS."""
import socket, ssl, sys, threading, time

BODY = b"x" * 100
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\n" + BODY
BIG = 2 * 1048576
BIG_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"y" * BIG

def serve(cert, port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    def handle(conn):
        try:
            s = ctx.wrap_socket(conn, server_side=True)
            buffer = b""
            while True:
                data = s.recv(65536)
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    s.sendall(BIG_RESPONSE if head.startswith(b"GET /big ") else RESPONSE)
        except Exception:
            pass
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()

def measure(cafile, port, n):
    ctx = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = ctx.wrap_socket(raw, server_hostname="origin.test")
    request = f"GET / HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n".encode()
    samples = []
    buffered = b""
    def receive():
        data = s.recv(65536)
        if not data:
            sys.exit("keepalive.py: the connection closed mid-measurement")
        return data
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(request)
        # A whole response by its Content-Length: proxies may add headers (Squid's Via, ...).
        while b"\r\n\r\n" not in buffered:
            buffered += receive()
        head, _, buffered = buffered.partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0].decode()
        if status != "HTTP/1.1 200 OK":
            sys.exit("keepalive.py: " + status)
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:] if line.lower().startswith(b"content-length:"))
        while len(buffered) < length:
            buffered += receive()
        buffered = buffered[length:]
        samples.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    samples.sort()
    print(f"{n / total:.0f} {samples[n // 2] * 1e6:.0f} {samples[int(n * 0.99)] * 1e6:.0f}")

def hold(cafile, port, n, seconds):
    ctx = ssl.create_default_context(cafile=cafile)
    held = []
    for _ in range(n):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="origin.test")
        s.sendall(f"GET /big HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536) or sys.exit("keepalive.py: closed before the head")
        got = len(got.partition(b"\r\n\r\n")[2])
        while got < BIG:
            got += len(s.recv(1 << 20) or sys.exit("keepalive.py: closed mid-body"))
        held.append(s)
    print("ready", flush=True)
    time.sleep(seconds)

if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "hold":
        hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        measure(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

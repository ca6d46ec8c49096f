"""Sends random UDP datagrams at HOST:PORT for SECONDS (what a scanner or a
misdirected client sends): sizes 20-1400 bytes, as fast as one core allows,
or at RATE datagrams/s. Used by scripts/garbage-flood.sh."""
import os, random, socket, sys, time

host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payloads = [os.urandom(random.randint(20, 1400)) for _ in range(1024)]
end = time.time() + seconds
sent = 0
start = time.time()
while time.time() < end:
    for p in payloads[:64]:
        try:
            s.sendto(p, (host, port))
        except OSError:
            pass
    sent += 64
    random.shuffle(payloads)
    if rate:
        ahead = sent / rate - (time.time() - start)
        if ahead > 0:
            time.sleep(ahead)
print(f"sent {sent} datagrams in {time.time() - start:.1f}s", file=sys.stderr)

"""free-port.py PORT: print PORT when 127.0.0.1:PORT is free to listen on,
else a free port the kernel picks (tests/compose/run.sh and
tests/compose_ha/run.sh publish their stack on it)."""
import socket
import sys

s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    s.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()

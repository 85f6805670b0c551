"""Joining a multi-process (multi-host) run: one process per host, all devices in one mesh.

A process that dies mid-run (killed, out of memory, a crashed host) would leave the others
blocked in their next collective until JAX's coordination service misses its heartbeats and
aborts them with a C++ stack dump. :func:`initialize_distributed` therefore also starts a
peer watch: every process keeps a TCP connection to process 0, and a connection that closes
before its process said it finished (:func:`finished`) ends the process at the other end at
once with one line, ``error: process N of this M-process run died or ended early``. A host
that vanishes without closing its connections is noticed by TCP keepalive within about 25 s.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading

import jax
import numpy as np

# Environment variables holding the process count of a cluster launch JAX can auto-detect.
_CLUSTER_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
_FINISHED = b"F"  # what a process sends its peers when it ends normally
_HOST_BYTES = 256  # room for process 0's host name in the broadcast
_KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}  # seconds, seconds, probes


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Joins a multi-process run via ``jax.distributed.initialize`` and starts the peer watch;
  returns whether it did.

  With ``coordinator_address`` (``host:port`` of process 0), the given process count and id
  are used. Without it, a cluster launch of more than one process (SLURM's ``srun``, Open
  MPI's ``mpirun``) is joined with JAX's own detection of its environment. Otherwise this is
  a single-process run and nothing happens. Call it before anything touches a JAX device, and
  call :func:`finished` when the process's work is done.
  """
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif max(int(os.environ.get(var, "1") or 1) for var in _CLUSTER_SIZE_VARS) > 1:
    jax.distributed.initialize()
  else:
    return False
  host = coordinator_address.rsplit(":", 1)[0].strip("[]") if coordinator_address else None
  _watch_peers(host)
  return True


class _PeerWatch:
  """This process's connections to its peers (process 0: to every other process; others: to
  process 0), each watched by a daemon thread."""

  def __init__(self, index: int, count: int):
    self.index, self.count = index, count
    self.connections: list[socket.socket] = []
    self.lock = threading.Lock()
    self.done = False

  def add(self, conn: socket.socket, peer: int) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE.items():
      if hasattr(socket, name):
        conn.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    with self.lock:
      self.connections.append(conn)
    threading.Thread(target=self._watch, args=(conn, peer), daemon=True,
                     name=f"peer-watch-{peer}").start()

  def _watch(self, conn: socket.socket, peer: int) -> None:
    try:
      said = conn.recv(1)
    except OSError:
      said = b""
    if said == _FINISHED or self.done:
      return
    _exit_with(f"error: process {peer} of this {self.count}-process run died or ended early "
               f"(see its log); this process {self.index} stops too. Start every process again "
               "to resume from the last checkpoint.")

  def finish(self) -> None:
    with self.lock:
      self.done = True
      for conn in self.connections:
        with contextlib.suppress(OSError):  # that peer is gone already
          conn.sendall(_FINISHED)


def _exit_with(line: str) -> None:
  """Ends this process at once with exit code 1 and ``line`` as the last thing on stderr.

  JAX's shutdown would wait for the dead process, then abort. When process 0 dies, JAX's own
  runtime (its coordination service lives there) notices it too and ends this process from a
  C++ thread with several lines of gRPC errors; stderr is silenced after ``line`` so that
  those do not bury it, and whichever of the two ends the process first, the exit code is 1.
  """
  with contextlib.suppress(Exception):
    sys.stdout.flush()
    sys.stderr.flush()
  os.write(2, (line + "\n").encode())
  os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
  os._exit(1)


_watch: _PeerWatch | None = None


def _watch_peers(host: str | None) -> None:
  """Connects this process to its peers (see the module docstring): process 0 listens on a
  free port and broadcasts it, with the name of its host where ``host`` (process 0's address,
  as the other processes reach it) is not known."""
  global _watch
  from jax.experimental import multihost_utils

  index, count = jax.process_index(), jax.process_count()
  _watch = _PeerWatch(index, count)
  server = None
  if index == 0:
    dual = socket.has_dualstack_ipv6()  # peers may reach process 0 by IPv4 or IPv6
    server = socket.create_server(("", 0), family=socket.AF_INET6 if dual else socket.AF_INET,
                                  backlog=count, dualstack_ipv6=dual)
  name = np.frombuffer(socket.getfqdn().encode()[:_HOST_BYTES].ljust(_HOST_BYTES), np.uint8)
  port, name = multihost_utils.broadcast_one_to_all(
      (np.int32(server.getsockname()[1] if server else 0), name))
  if server is not None:

    def accept() -> None:
      for _ in range(count - 1):
        conn, _ = server.accept()
        peer = int(conn.recv(8, socket.MSG_WAITALL).decode())
        _watch.add(conn, peer)
      server.close()

    threading.Thread(target=accept, daemon=True, name="peer-watch-accept").start()
  else:
    host = host or bytes(np.asarray(name)).rstrip(b" ").decode()
    conn = socket.create_connection((host, int(port)), timeout=60)
    conn.settimeout(None)
    conn.sendall(f"{index:<8d}".encode())
    _watch.add(conn, 0)


def finished() -> None:
  """Tells the peers that this process ended normally, so that its exit is not taken for a
  death. No-op in a single-process run."""
  if _watch is not None:
    _watch.finish()

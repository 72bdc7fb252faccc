"""The pyxs client (PyPI) against the xenstored at $XENSTORED_PATH: nodes, permissions,
transactions (commit, conflict, rollback) and a watch. Prints one line per observation so two
daemons' transcripts can be compared."""
import errno
import os
import queue

from pyxs import Client, PyXSError

path = os.environ["XENSTORED_PATH"]


def show(*items):
    print(" ".join(repr(i) for i in items), flush=True)


with Client(unix_socket_path=path) as c, Client(unix_socket_path=path) as other:
    c.write(b"/tool/pyxs/a", b"one")
    c.mkdir(b"/tool/pyxs/dir")
    show("read", c.read(b"/tool/pyxs/a"))
    show("list", sorted(c.list(b"/tool/pyxs")))
    show("exists", c.exists(b"/tool/pyxs/a"), c.exists(b"/tool/pyxs/none"))
    c.set_perms(b"/tool/pyxs/a", [b"n0", b"r5"])
    show("perms", c.get_perms(b"/tool/pyxs/a"))
    try:
        c.read(b"/tool/pyxs/none")
    except PyXSError as e:
        show("missing", errno.errorcode.get(e.args[0]))
    show("domain-path", c.get_domain_path(3))

    c.transaction()
    c.write(b"/tool/pyxs/tx", b"1")
    show("commit", c.commit(), c.read(b"/tool/pyxs/tx"))

    c.transaction()
    c.read(b"/tool/pyxs/tx")
    other.write(b"/tool/pyxs/tx", b"2")
    c.write(b"/tool/pyxs/tx", b"3")
    show("conflicting-commit", c.commit(), c.read(b"/tool/pyxs/tx"))

    c.transaction()
    c.write(b"/tool/pyxs/rolled", b"x")
    c.rollback()
    show("rolled-back-exists", c.exists(b"/tool/pyxs/rolled"))

    m = c.monitor()
    m.watch(b"/tool/pyxs/w", b"tok")
    other.write(b"/tool/pyxs/w/x", b"1")
    seen = []
    # Monitor.wait() can lose the registration event in pyxs 0.4.1: read its queue directly.
    while (b"/tool/pyxs/w/x", b"tok") not in seen:
        seen.append(tuple(m.events.get(timeout=5)))
    show("watch", (b"/tool/pyxs/w/x", b"tok") in seen)
    m.unwatch(b"/tool/pyxs/w", b"tok")
    c.delete(b"/tool/pyxs")
    show("deleted", c.exists(b"/tool/pyxs/a"))

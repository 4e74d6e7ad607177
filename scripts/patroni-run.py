"""Runs Debian's Patroni 3.0.2 with one upstream fix (patroni/patroni#3649, pull #3372).

A leader that loses etcd demotes itself in the background ("offline": a fast shutdown, then
a start as a replica). When that takes longer than one loop (a leader cut off the network:
the shutdown waits for WAL senders to reach replicas it cannot reach), 3.0.2's next loop,
finding the background task busy, demotes a second time from the main thread. The two
start two postmasters, Patroni loses track of one, a later pg_rewind fails on its lock, and
the data folder is removed under a running server (seen in `bench chaos --hosts --faults
partition`). With the fix, the loop waits for the demote in progress instead.
"""
import sys

from patroni import ha

_handle_dcs_error = ha.Ha._handle_dcs_error


def handle_dcs_error(self):
    action = self._async_executor.scheduled_action
    if action and action.startswith('demoting self because DCS is not accessible'):
        return action + ' in progress'
    return _handle_dcs_error(self)


ha.Ha._handle_dcs_error = handle_dcs_error

if __name__ == '__main__':
    from patroni.__main__ import main
    sys.exit(main())

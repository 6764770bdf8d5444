"""Many `meter serve` processes on one PostgreSQL database (`--slots N`): each member holds
leases in the server (`meter.store.leases`) for an ingest slot, a share of the live-tracking partitions
(`tracking`) and, while it finalizes an account, that account's job (`jobs`); `node` runs a
member. A member that dies loses its leases with its connection, and the others take them.
"""

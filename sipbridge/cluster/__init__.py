"""Cluster mode: several nodes sharing one PostgreSQL store (calls, queue, leases,
outbox) and one Redis (cluster-wide CPS, concurrency slots, API rate, node-to-node
commands). Configured by ``cluster:`` (sipbridge.clusterconfig)."""

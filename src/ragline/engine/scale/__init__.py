"""Scale-out on Ray: connecting to a cluster, and the Ray Data actors that
encode passages for an index build. Nothing here is imported unless a command
asks for Ray (``--ray``); see docs/scale.md."""

"""Scale-out on Ray: connecting to a cluster, an ordered map over an actor
pool, and the actors that encode passages for an index build. Nothing here is imported unless a command
asks for Ray (``--ray``); see docs/scale.md."""

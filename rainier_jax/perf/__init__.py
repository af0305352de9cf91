"""The performance model: FLOPs, memory, collective pricing, estimate, planner, HLO reading and the compiled path."""

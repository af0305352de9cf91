"""Parallelism as a mapping: layouts, placement on the topology, axis rules, shardings, pipeline schedules and the SPMD pipeline executor."""

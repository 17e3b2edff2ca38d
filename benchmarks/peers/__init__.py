"""Peer simulators for benchmarks/kernel_speed.py; they run in their own virtual env."""

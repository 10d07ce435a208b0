"""Trace-replay simulator: a fleet of emulated vLLM replicas under the operator's planner and the
baselines it is compared with (HPA, KEDA, Dynamo's SLA planner, static peak, a clairvoyant oracle).

Pure core (no I/O): `trace` (readers), `fleet`, `metrics`, `policies`, `simulate`. `cli` is the
command line (`goodput simulate`) and the only module that reads files or draws. See
docs/simulator.md.
"""

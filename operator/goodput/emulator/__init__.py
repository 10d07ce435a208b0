"""A fleet of emulated vLLM replicas that follows the pods of a real (or kwok) cluster.

`goodput.emulator.process` runs one process per InferenceDeployment: every Running pod of it
becomes a `goodput.engine.replica.EngineReplica` advanced in real time, serving vLLM's exact
``/metrics`` on its own 127.0.0.1 port and listed in a Prometheus file_sd targets file, under a
load generated from a trace or a rate schedule. With a real Prometheus and the operator this
closes the loop: load -> vLLM metrics -> Prometheus -> operator -> Deployments -> pods -> replicas.
"""

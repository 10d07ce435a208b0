"""The vLLM emulator's pure core: one replica's continuous-batching engine and its Prometheus
exposition. No I/O, no wall clock; a simulator or an HTTP shim drives it."""

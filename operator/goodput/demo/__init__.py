"""`goodput demo`: the closed loop on this machine (local control plane with fake GPU nodes,
Prometheus, the vLLM emulator replaying a trace, the operator), with its decisions streamed and a
summary and plot at the end.

* `goodput.demo.stack`: the loop's processes and cluster steps, shared with the closed-loop test;
* `goodput.demo.report`: decisions, load profile, GPU-hours, SLO attainment, summary, plot;
* `goodput.demo.run`: the command.
"""

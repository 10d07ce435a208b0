"""The capacity model: pure numpy arithmetic, no I/O beyond reading the package's own data files.

Invariants (checked by tests/unit/test_properties.py):
- a larger batch never gives a shorter step; higher bandwidth never gives a slower decode;
- more demand never gives fewer replicas; tighter SLOs never give a cheaper plan.
"""

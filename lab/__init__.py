"""The local lab: real libvirt hosts (and Ceph, DPDK, OVS, Prometheus) on one machine.

Where it sits: outside the control flow. It gives the controller a real fleet to act on in
``make demo`` and the integration tests. Everything it starts is named from one run prefix and
takes addresses and ports from one slot (see ``layout``), so several labs never collide.
"""

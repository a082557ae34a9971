"""The quorum service (corosync service 3, exec/vsf_quorum.c): quorum for local programs.

It has no messages of its own on the ring: it passes the decision of the quorum provider
(votequorum) to libquorum clients. Only its library face lives here (`lib.py`).
"""

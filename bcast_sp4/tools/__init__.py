"""Operator tools around the node: the ``bcast-sp4`` command line (decode), the text/JSON views of
messages, and a dependency-free pcap/pcapng reader and writer. Pure: no Twisted."""

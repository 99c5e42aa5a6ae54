"""Attachments of the service loop: logs (log), stats, /metrics (metrics),
evidence pcapng (pcap), the listening sockets (listener) and the control
socket server (control_server).  Called per batch and per turn, never per frame."""

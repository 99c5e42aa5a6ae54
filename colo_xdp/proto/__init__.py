"""Sans-I/O protocols: QEMU chardev framing, notify_dev, the control socket's
lines and commands (control), flow specs and the passthrough list (flows), and
the IPv4 names the product shares (ipv4).  Nothing here reads a socket or a clock."""

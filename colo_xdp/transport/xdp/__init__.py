"""The XDP transport: bpf/classify.c compiled, loaded and attached (classifier,
classify_abi, bpfsys), AF_XDP sockets (xsk) and ports with their loop roles
XdpInput and XdpOutdev (port)."""

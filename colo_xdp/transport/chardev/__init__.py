"""The chardev transport: endpoint specs (unix:, tcp:) and the loop roles
Input, Outdev and Notify that carry QEMU-framed streams to and from the engine."""

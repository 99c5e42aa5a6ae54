"""What `colo-xdp demo` runs, and what tools and tests share to drive the product:
the namespace lab (xdp_demo), the chardev scenario (chardev_demo), netns,
pktgen (frames), process (spawn, wait for ready, stop a colo-xdp)."""

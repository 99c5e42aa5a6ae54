"""colo-xdp: COLO network output comparison as a standalone Linux service."""

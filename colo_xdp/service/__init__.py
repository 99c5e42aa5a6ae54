"""The service: one Loop (selector, clock, backpressure) and what runs on it,
CompareService (colo-xdp compare) and ForwardService (colo-xdp forward);
config checks a compare configuration as a whole before anything is opened."""
